"""The Slurm engine: one batch script (one torchrun agent per node), submitted with sbatch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from launcher.engines.base import CORE_FIELDS
from launcher.engines.slurm.accounting import accounting_rows, slurm_verdict
from launcher.engines.slurm.logs import follow_lines, read_lines
from launcher.engines.slurm.options import SlurmOptions
from launcher.engines.slurm.script import JobFiles, render_sbatch
from launcher.engines.slurm.state import JobState, job_state
from launcher.engines.slurm.submit import accounting_state, cancel_job, job_folder, python_for, submit_job
from launcher.errors import SpecError
from launcher.jobs import JobHandle
from launcher.ranks import format_ranks, read_ranks, request_stacks
from launcher.spec import JobSpec
from launcher.verdict import Verdict, first_failure, read_verdicts, render, render_line

# Between state checks while following logs: double from the first to the last, so a long job
# costs the controller one query a minute, not one a second.
POLL_FIRST_S, POLL_MAX_S = 1.0, 60.0


class SlurmEngine:
    name = "slurm"
    title = "Slurm"
    options = SlurmOptions
    reads = CORE_FIELDS | {"rdzv_endpoint", "gpus_per_node", "time", "image", "mounts"}
    # sbatch runs the job in the folder it was called from, which the compute nodes see too.
    program_is_here = True

    def validate(self, spec: JobSpec, options: SlurmOptions) -> None:
        options.validate(spec)

    def render(self, spec: JobSpec, options: SlurmOptions) -> str:
        return render_sbatch(spec, options, job_folder(spec, options), python_for(options), Path.cwd())

    def submit(self, spec: JobSpec, options: SlurmOptions) -> JobHandle:
        return submit_job(self.render(spec, options), spec, options)

    def state(self, handle: JobHandle) -> JobState:
        return job_state(handle.native_id, lambda: accounting_state(handle))

    def status(self, handle: JobHandle) -> str:
        state = self.state(handle)
        if state.done:
            verdict = self.verdict(handle) if state.state != "COMPLETED" else None
            return state.describe() + (f"\n{render(verdict)}" if verdict is not None else "")
        return f"{state.describe()}\n{format_ranks(read_ranks(self._status_dir(handle)))}"

    def verdict(self, handle: JobHandle) -> Verdict | None:
        """A failed job's verdict: its agents' (from the status folder) with sacct's step code and state."""
        agents = read_verdicts(self._status_dir(handle))
        first = first_failure(agents)
        # The failed node's own log where the agent's host name is Slurm's node name (%N), else every node's.
        logs = Path(handle.folder) / f"{handle.native_id}.{first.host if first else '*'}.log"
        if not logs.is_file():
            logs = Path(handle.folder) / f"{handle.native_id}.*.log"
        return slurm_verdict(accounting_rows(handle.native_id), agents, str(logs))

    def stacks(self, handle: JobHandle) -> str:
        if self.state(handle).done:
            raise SpecError("JOB", f"{handle.id} has ended", "stacks are taken from a running job")
        return request_stacks(self._status_dir(handle), int(handle.extra.get("nnodes", "1")))

    @staticmethod
    def _status_dir(handle: JobHandle) -> Path:
        # As launcher.engines.slurm.script.status_dir renders it, with the job id filled in.
        return Path(handle.folder) / f"{handle.native_id}.status"

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        files = JobFiles(Path(handle.folder))
        if not follow:
            yield from read_lines(files.logs(handle.native_id), rank)
        else:
            yield from follow_lines(lambda: files.logs(handle.native_id), rank,
                                    done=lambda: self.state(handle).done,
                                    first_poll_s=POLL_FIRST_S, max_poll_s=POLL_MAX_S, clock=time.monotonic)
        state = self.state(handle)
        if state.done and state.state != "COMPLETED" and (verdict := self.verdict(handle)) is not None:
            yield render_line(verdict)

    def cancel(self, handle: JobHandle) -> None:
        cancel_job(handle)


ENGINE = SlurmEngine()
