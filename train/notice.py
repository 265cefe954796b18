"""The stop signals, noted from the program's first line: a stop during imports, data or resume is never lost.

Installed by ``python -m train`` before torch is imported, and kept until the process exits, so a
signal at any moment only sets this flag (train.signals.StopFlag turns it into an agreed stop). A
second SIGINT interrupts at once, as Ctrl-C twice does everywhere.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from train.contract import STOP_SIGNALS


class StopNotice:
    """The first stop signal this process received, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.installed = False

    def install(self) -> dict[int, Any]:
        """Note every stop signal from now on (forgetting any noted before); returns the handlers it replaced."""
        self.signum = None
        previous: dict[int, Any] = {signum: signal.signal(signum, self._note) for signum in STOP_SIGNALS}
        self.installed = True
        return previous

    def uninstall(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        self.installed = False

    def settle(self) -> None:
        """The exit code is decided: ignore stop signals until the process ends.

        CPython resets Python signal handlers to SIG_DFL while the interpreter finalizes; a stop signal
        in those milliseconds killed a rank that had finished (128 + N). Ignored stays ignored.
        """
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        self.installed = False

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    @property
    def received(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a peer rank's signal"


# One per process: signal handlers are process-wide.
NOTICE = StopNotice()
