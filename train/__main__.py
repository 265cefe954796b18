"""`python -m train --config NAME|PATH [section.key=value ...]`: the program every rank runs, or its check mode."""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from train.contract import CHECK_ENV, EXIT_REQUEUE, STOP_SIGNALS
from train.notice import NOTICE


def main(argv: list[str] | None = None, imported: Callable[[], None] | None = None) -> int:
    """Report startup, then check the torch floor: on an older torch one line says so, before any import fails.

    ``imported`` is called once the program is imported, before it starts.
    """
    from train.timeline import mark, progress

    mark("up")
    report = progress()
    from train.compat import torch_floor_problem
    from train.contract import EXIT_BAD_INPUT, EXIT_OK

    mark("torch imported")

    problem = torch_floor_problem()
    if problem is not None:
        print(f"train: error: torch: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Imported only now: it uses APIs the floor guarantees (DCP's staging among them).
    from train.program import main as run_program

    if imported is not None:
        imported()
    mark("program imported")
    # torch's @record types the wrapped main as returning int | None.
    code = run_program(argv, report)
    return EXIT_OK if code is None else code


def exit_while_importing(signum: int, _frame: FrameType | None) -> None:
    """A stop signal while the program is being imported: nothing has started, so exit 75 now, not after
    the rest of the imports (a second: torchrun stops a rank this way when its peer dies as they start)."""
    print(f"train: exiting {EXIT_REQUEUE} (requeue me): stopped by {signal.Signals(signum).name} while importing",
          file=sys.stderr, flush=True)
    os._exit(EXIT_REQUEUE)


def start_program() -> None:
    """The program is imported: from now on a stop signal is noted and the ranks agree on it (train/notice.py),
    and what the imports made stays out of the collector's walks (it collects again what the run makes)."""
    NOTICE.install()
    gc.freeze()
    gc.enable()


if __name__ == "__main__":
    if os.environ.get(CHECK_ENV) == "1":
        from train.check import main as check

        sys.exit(check())
    # First, before torch is imported (seconds): from here on a stop signal is never fatal (128 + N). Until
    # the program is imported it ends the process with 75 at once; from then on it is noted (start_program).
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, exit_while_importing)
    # Importing torch and the program makes ~300,000 tracked objects and next to no garbage, yet the collector
    # walks them all in each of its full passes: off while importing, then frozen out of its reach
    # (0.3 s of every rank's start and restart, and cheap collections from there on).
    gc.disable()
    try:
        code = main(imported=start_program)
    finally:
        # The interpreter's last collection at exit walks every object again (0.3 s with torch imported):
        # a rank whose peer died holds up its agent's restart for as long.
        gc.freeze()
    NOTICE.settle()
    sys.exit(code)
