"""Submit the rendered batch script with sbatch; accounting and cancel through submitit's public SlurmJob.

The script gangrun renders is the one Slurm runs: `gangrun render --target slurm`, the golden tests,
shellcheck and the plain slurm/train.sbatch all see that text. submitit's public API submits only
its own pickled-function script and cannot print it, so submission is Slurm's own interface
(`sbatch --parsable`); submitit's SlurmJob reads accounting (its rate-limited sacct) and cancels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.engines.slurm.options import SlurmOptions
from launcher.engines.slurm.state import JobState
from launcher.errors import SpecError
from launcher.jobs import JobHandle, jobs_home
from launcher.spec import JobSpec

if TYPE_CHECKING:
    from submitit import SlurmJob


def job_folder(spec: JobSpec, options: SlurmOptions) -> Path:
    """Where this job's script and logs go: the compute nodes must see the same path."""
    base = Path(options.job_dir).expanduser() if options.job_dir else jobs_home().parent / "slurm"
    return base.absolute() / spec.job_name


def python_for(options: SlurmOptions) -> str:
    return options.python or sys.executable


def sbatch(script: str, folder: Path) -> str:
    """Submit ``script`` (kept as ``<job id>.sbatch`` in ``folder``); returns Slurm's job id."""
    if shutil.which("sbatch") is None:
        raise SpecError("target", "sbatch is not on PATH", "submit from a Slurm login node, or use "
                        "`gangrun render --target slurm` and sbatch the script there")
    folder.mkdir(parents=True, exist_ok=True)
    pending = folder / f".submitting-{os.getpid()}.sbatch"
    pending.write_text(script)
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(pending)], capture_output=True, text=True)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise SpecError("slurm", f"sbatch refused the job ({reason})",
                            "check partition, account, qos and limits with sinfo and sacctmgr")
        # --parsable prints "<id>" or "<id>;<cluster>".
        job_id = proc.stdout.strip().split(";")[0]
        pending.rename(folder / f"{job_id}.sbatch")
    finally:
        pending.unlink(missing_ok=True)
    return job_id


def submit_job(script: str, spec: JobSpec, options: SlurmOptions) -> JobHandle:
    folder = job_folder(spec, options)
    job_id = sbatch(script, folder)
    handle = JobHandle(target="slurm", native_id=job_id, name=spec.job_name, folder=str(folder),
                       extra={"script": str(folder / f"{job_id}.sbatch"), "nnodes": str(spec.nnodes.max)})
    handle.save()
    return handle


def slurm_job(handle: JobHandle) -> SlurmJob:
    # Imported on use: submitit takes 35 ms to import, which every `gangrun run` would pay for nothing.
    from submitit import SlurmJob

    return SlurmJob(folder=handle.folder, job_id=handle.native_id)


def accounting_state(handle: JobHandle) -> JobState:
    """What sacct says, through submitit (which rate-limits its calls and parses sacct's quirks)."""
    info = slurm_job(handle).get_info(mode="force")
    return JobState((info.get("State") or "UNKNOWN").split()[0], info.get("NodeList", ""))


def cancel_job(handle: JobHandle) -> None:
    slurm_job(handle).cancel()
