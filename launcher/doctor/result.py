"""One check's outcome and its one-line rendering: pure, so golden tests see exactly what a user reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from launcher.contract import EXIT_OK

Status = Literal["ok", "warn", "fail"]
# Doctor exits 1 when a check failed: not 2, which every gangrun command keeps for bad input (a flag).
EXIT_CHECK_FAILED = 1
PREFLIGHT_PREFIX = "gangrun: preflight: "


@dataclass(frozen=True)
class Check:
    """What one check found: ``name`` is the field or thing it looked at, ``fix`` what to do (not for ok)."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """``ok   rdzv_endpoint: ...`` or ``fail rdzv_endpoint: ...; fix``: aligned, so a column of them reads."""
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix and self.status != "ok" else text

    def preflight_line(self) -> str:
        """What an agent or `gangrun run` prints for a check that did not pass: ``gangrun: preflight: fail: ...``."""
        text = f"{PREFLIGHT_PREFIX}{self.status}: {self.name}: {self.detail}"
        return f"{text}; {self.fix}" if self.fix else text


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str) -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, "fail", detail, fix)


def first_failure(checks: Iterable[Check]) -> Check | None:
    return next((check for check in checks if check.status == "fail"), None)


def exit_code(checks: Iterable[Check]) -> int:
    """0 when no check failed (warnings pass), else EXIT_CHECK_FAILED."""
    return EXIT_CHECK_FAILED if first_failure(checks) is not None else EXIT_OK
