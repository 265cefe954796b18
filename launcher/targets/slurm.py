"""The Slurm target: our rendered sbatch script submitted through submitit; state, logs and cancel after."""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from submitit import SlurmExecutor, SlurmJob
from submitit.core.utils import FailedJobError

from launcher.errors import SpecError
from launcher.jobs import JobHandle, jobs_home
from launcher.slurm_logs import follow_lines, read_lines
from launcher.slurm_script import JobFiles, render_sbatch
from launcher.slurm_state import JobState, job_state
from launcher.spec import JobSpec

# Between state checks while following logs: double from the first to the last, so a long job
# costs the controller one query a minute, not one a second.
POLL_FIRST_S, POLL_MAX_S = 1.0, 60.0


def job_folder(spec: JobSpec) -> Path:
    """Where this job's script and logs go: the compute nodes must see the same path."""
    base = Path(spec.slurm.job_dir).expanduser() if spec.slurm.job_dir else jobs_home().parent / "slurm"
    return base.absolute() / spec.job_name


def python_for(spec: JobSpec) -> str:
    return spec.slurm.python or sys.executable


class _ScriptExecutor(SlurmExecutor):
    """submitit's executor with our script in place of its pickled-function one.

    submitit then runs sbatch, reads the job id, keeps the script as ``<id>_submission.sh``, and
    hands back a SlurmJob whose state comes from its rate-limited sacct watcher.
    """

    def __init__(self, folder: Path, script: str) -> None:
        super().__init__(folder)
        self._script = script

    def _make_submission_file_text(self, command: str, uid: str) -> str:
        return self._script


def _native_job(handle: JobHandle) -> SlurmJob:
    return SlurmJob(folder=handle.folder, job_id=handle.native_id)


@dataclass(frozen=True)
class SlurmTarget:
    name: str = "slurm"

    def render(self, spec: JobSpec) -> str:
        return render_sbatch(spec, job_folder(spec), python_for(spec))

    def submit(self, spec: JobSpec) -> JobHandle:
        script = self.render(spec)
        if shutil.which("sbatch") is None:
            raise SpecError("target", "sbatch is not on PATH", "submit from a Slurm login node, or use "
                            "`gangrun render --target slurm` and sbatch the script there")
        folder = job_folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        sbatch_errors = io.StringIO()
        try:
            # submitit prints sbatch's stderr as well as raising it; the one-line error below says it.
            with contextlib.redirect_stderr(sbatch_errors):
                # The one seam submitit offers for a script of our own (PicklingExecutor._submit_command).
                job = _ScriptExecutor(folder, script)._submit_command("")
        except FailedJobError as err:
            reason = str(err).strip().splitlines() or [sbatch_errors.getvalue().strip()]
            raise SpecError("slurm", f"sbatch refused the job ({reason[-1]})",
                            "check partition, account, qos and limits with sinfo and sacctmgr") from None
        handle = JobHandle(target=self.name, native_id=job.job_id, name=spec.job_name, folder=str(folder),
                           extra={"script": str(job.paths.submission_file)})
        handle.save()
        return handle

    def state(self, handle: JobHandle) -> JobState:
        def accounting() -> JobState:
            info = _native_job(handle).get_info(mode="force")
            return JobState((info.get("State") or "UNKNOWN").split()[0], info.get("NodeList", ""))

        return job_state(handle.native_id, accounting)

    def status(self, handle: JobHandle) -> str:
        return self.state(handle).describe()

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        files = JobFiles(Path(handle.folder))
        if not follow:
            yield from read_lines(files.logs(handle.native_id), rank)
            return
        yield from follow_lines(lambda: files.logs(handle.native_id), rank,
                                done=lambda: self.state(handle).done,
                                first_poll_s=POLL_FIRST_S, max_poll_s=POLL_MAX_S, clock=time.monotonic)

    def cancel(self, handle: JobHandle) -> None:
        _native_job(handle).cancel()


TARGET = SlurmTarget()
