"""The agent's last words on a failed run: this node's verdict (launcher.verdict) from torchrun's failures."""

from __future__ import annotations

import contextlib
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from launcher.agent.oom import OomWatch
from launcher.contract import EXIT_HANG, EXIT_REQUEUE
from launcher.verdict import Verdict, classify, first_failure, from_returncode

# Enough of a worker's stderr for its last traceback (a CUDA OOM's runs to a few KiB).
STDERR_TAIL_BYTES = 64 * 1024


def _stderr_tail(path: Path | None) -> str:
    if path is None:
        return ""
    with contextlib.suppress(OSError), path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - STDERR_TAIL_BYTES))
        return f.read().decode(errors="replace")
    return ""


def _trace(failure: ProcessFailure, stderr: Path | None) -> str:
    """The worker's traceback: from its error file (a program under torch's @record), else its stderr."""
    message = failure.message
    if isinstance(message, dict):
        trace = message.get("extraInfo", {}).get("py_callstack")
        if trace:
            return str(trace)
    return _stderr_tail(stderr)


def rank_verdict(rank: int, failure: ProcessFailure, host: str, oom: OomWatch, stderr: Path | None) -> Verdict:
    code, signal = from_returncode(failure.exitcode)
    # Only a SIGKILL can be the OOM killer's; asking for anything else would blame a rise in the
    # cgroup's count (another process's OOM) on the wrong worker.
    killer = oom.evidence(failure.pid if isinstance(failure.pid, int) else None) if signal == "SIGKILL" else ""
    return classify(rank, host, code or 1, signal, _trace(failure, stderr), killer, at=float(failure.timestamp))


def failure_verdict(err: ChildFailedError, host: str, oom: OomWatch, stderrs: dict[int, Path]) -> Verdict:
    """This node's verdict: torchrun's failed workers, the first cause among them named first.

    ``stderrs``: each worker's stderr log by local rank (launcher.compat.worker_stderrs).
    """
    verdict = first_failure(rank_verdict(rank, f, host, oom, stderrs.get(f.local_rank))
                            for rank, f in err.failures.items())
    assert verdict is not None  # a ChildFailedError always carries a failure
    return verdict


def hang_verdict(culprits: list[int], line: str, host: str, at: float) -> Verdict:
    """The hang watchdog's verdict (launcher.agent.hang): its line is the detail."""
    return Verdict("hang", culprits[0] if culprits else None, host, EXIT_HANG,
                   detail=line.removeprefix("gangrun: hang: "), at=at)


def stopped_verdict(code: int, host: str, at: float, why: str) -> Verdict:
    """The ranks were stopped (a stop signal, a preemption notice): 75 asks for a start again."""
    klass = "preempted" if code == EXIT_REQUEUE else classify(None, host, code).klass
    return Verdict(klass, None, f"the ranks on {host}", code, detail=why, at=at)

