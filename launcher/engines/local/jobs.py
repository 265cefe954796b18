"""A local run's handle, so `gangrun list|status|logs|stacks|cancel` treat it as they treat a cluster job.

``gangrun run`` keeps its folder at ``$GANGRUN_HOME/local/<run id>``: the console (``console.log``,
both streams of every node's agent), the agents' status (``status/``) and, once it ended, ``exit``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from launcher.contract import rank_of
from launcher.errors import SpecError
from launcher.jobs import JobHandle, jobs_home
from launcher.ranks import format_ranks, read_ranks, request_stacks
from launcher.verdict import Verdict, first_failure, read_verdicts, render, render_line

TARGET = "local"
CONSOLE = "console.log"
EXIT_FILE = "exit"


def run_folder(run_id: str) -> Path:
    return jobs_home().parent / "local" / run_id


def new_handle(run_id: str, name: str, nnodes: int) -> JobHandle:
    folder = run_folder(run_id)
    (folder / "status").mkdir(parents=True, exist_ok=True)
    handle = JobHandle(TARGET, run_id, name, str(folder), extra={"pid": str(os.getpid()), "nnodes": str(nnodes)})
    handle.save()
    return handle


def record_exit(handle: JobHandle, code: int) -> None:
    (Path(handle.folder) / EXIT_FILE).write_text(f"{code}\n")


def _exit_code(handle: JobHandle) -> int | None:
    path = Path(handle.folder) / EXIT_FILE
    return int(path.read_text()) if path.is_file() else None


def _alive(handle: JobHandle) -> bool:
    try:
        os.kill(int(handle.extra["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def job_verdict(handle: JobHandle) -> Verdict | None:
    """The run's verdict from its agents' (none for a run that succeeded), with its console as the logs."""
    verdict = first_failure(read_verdicts(Path(handle.folder) / "status"))
    return verdict.with_logs(str(Path(handle.folder) / CONSOLE)) if verdict is not None else None


def status(handle: JobHandle) -> str:
    code = _exit_code(handle)
    if code is not None:
        verdict = job_verdict(handle) if code else None
        return f"{handle.id}: ENDED, exit {code}" + (f"\n{render(verdict)}" if verdict is not None else "")
    if not _alive(handle):
        return f"{handle.id}: ENDED without an exit status (gangrun run was killed)"
    ranks = format_ranks(read_ranks(Path(handle.folder) / "status"))
    return f"{handle.id}: RUNNING (gangrun run pid {handle.extra['pid']})\n{ranks}"


def logs(handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    path = Path(handle.folder) / CONSOLE
    offset = 0
    while True:
        ended = _exit_code(handle) is not None or not _alive(handle)
        if path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk if ended else chunk[:chunk.rfind(b"\n") + 1]
            offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if rank is None or rank_of(line) == rank:
                    yield line
        if not follow or ended:
            if ended and (verdict := job_verdict(handle)) is not None and _exit_code(handle):
                yield render_line(verdict)
            return
        time.sleep(0.5)


def cancel(handle: JobHandle) -> None:
    if not _alive(handle):
        raise SpecError("JOB", f"{handle.id} is not running", "see `gangrun status` for how it ended")
    # As Ctrl-C would: the ranks save, and the run exits 75 to be resumed with the same command.
    os.kill(int(handle.extra["pid"]), signal.SIGTERM)


def stacks(handle: JobHandle) -> str:
    if not _alive(handle) or _exit_code(handle) is not None:
        raise SpecError("JOB", f"{handle.id} is not running", "stacks are taken from a running job")
    return request_stacks(Path(handle.folder) / "status", int(handle.extra.get("nnodes", "1")))
