"""torchrun for one node, but exiting with the first failed worker's own exit code.

torchrun exits 1 for any worker failure, so an engine cannot tell bad input (2) from a crash or a
"requeue me" exit. This runs torchrun's own ``main`` in-process and, on ChildFailedError, prints
which global rank failed first and exits with that worker's code. Takes exactly torchrun's argv.
"""

from __future__ import annotations

import os
import sys
from typing import MutableMapping

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser
from torch.distributed.run import main as torchrun_main

from launcher.agent_signals import EXIT_REQUEUE, install_requeue_handling, requeue_after_shutdown

# A worker killed by a signal reports -SIGNUM; shells and Kubernetes report 128 + SIGNUM.
_SIGNAL_EXIT_BASE = 128


def worker_exit_code(exitcode: int) -> int:
    """A worker's exit code as a process exit status (signals become 128 + N; never 0)."""
    if exitcode < 0:
        return _SIGNAL_EXIT_BASE - exitcode
    return exitcode or 1


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


_PREFIX_FLAG = "--log-line-prefix-template="


def compat_argv(argv: list[str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """torch < 2.14 takes the log line prefix only from TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE.

    Container images often carry an older torch than the launcher's machine; move the flag into the
    variable there (both are read by 2.14+, so newer torch keeps the flag).
    """
    if hasattr(get_args_parser().parse_args(["script"]), "log_line_prefix_template"):
        return argv
    # Only torchrun's own flags (``--x=y``, before the entrypoint) are looked at, never the program's.
    head = next((i for i, arg in enumerate(argv) if not arg.startswith("--")), len(argv))
    flags = [arg for arg in argv[:head] if not arg.startswith(_PREFIX_FLAG)]
    for arg in argv[:head]:
        if arg.startswith(_PREFIX_FLAG):
            environ.setdefault("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", arg[len(_PREFIX_FLAG):])
    return [*flags, *argv[head:]]


def main(argv: list[str] | None = None) -> int:
    install_requeue_handling()
    try:
        torchrun_main(compat_argv(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as err:
        status, summary = failure_summary(err)
        print(summary, file=sys.stderr, flush=True)
        return status
    except SignalException as err:
        # torchrun stopped its workers because it was signalled. If they saved and asked to be
        # requeued, say so to the engine; otherwise report the signal as a shell would.
        if requeue_after_shutdown():
            print(f"gangrun: agent stopped by {err.sigval.name}; workers saved, exiting {EXIT_REQUEUE}",
                  file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        print(f"gangrun: agent stopped by {err.sigval.name}", file=sys.stderr, flush=True)
        return _SIGNAL_EXIT_BASE + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
