"""The agent's last words on a failed run: which rank failed first, how, and its exit status."""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from launcher.contract import exit_status


def worker_exit_code(exitcode: int) -> int:
    """A worker's exit code as a process exit status (signals become 128 + N; never 0)."""
    return exit_status(exitcode) or 1


def failure_summary(err: ChildFailedError) -> tuple[int, str]:
    """(exit status, one-paragraph summary) for the first failure torchrun observed."""
    rank, failure = err.get_first_failure()
    status = worker_exit_code(failure.exitcode)
    cause = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
    lines = [f"gangrun: rank {rank} failed first ({cause}); exiting {status}"]
    message = failure.message
    if isinstance(message, dict):
        trace = message.get("extraInfo", {}).get("py_callstack") or message.get("message", "")
        if trace:
            lines.append(f"gangrun: rank {rank} traceback:")
            lines.extend(f"[rank{rank}]: {line}" for line in str(trace).rstrip().splitlines())
    else:
        # No error file (the script has no @record): its traceback is in its own output above.
        lines.append(f"gangrun: rank {rank}'s error is in its [rank{rank}] lines above")
    others = sorted(r for r in err.failures if r != rank)
    if others:
        lines.append(f"gangrun: ranks that failed after it: {', '.join(map(str, others))}")
    return status, "\n".join(lines)
