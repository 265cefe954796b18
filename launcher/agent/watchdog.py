"""The hang watchdog: which ranks made no progress for longer than their phase allows.

``--hang-timeout auto`` (the default) derives each phase's allowance from what the run has shown:
training gets max(60 s, 5 x the slowest rank's p95 step time); startup, resume, eval, save and
teardown get a floor of their own or 5 x the longest that phase took so far. ``S`` seconds is the
training allowance, and the other phases get a fixed multiple of it (startup and resume 10 x, eval
and save 5 x, teardown 2 x): importing torch alone takes seconds. To a program that reports no
progress it means S seconds in which none of this node's ranks reported or printed anything.
``off`` never calls a hang. Pure decisions on a clock passed in, so the rules are unit-tested
without waiting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from launcher.agent.progress import RankProgress

AUTO_FACTOR = 5.0
TRAIN_FLOOR_S = 60.0
PHASE_FLOOR_S = {"startup": 600.0, "resume": 600.0, "eval": 300.0, "save": 300.0, "teardown": 120.0}
OTHER_PHASE_FLOOR_S = 300.0
# With a fixed --hang-timeout S, the phases other than training get S times these.
PHASE_FACTOR = {"startup": 10.0, "resume": 10.0, "eval": 5.0, "save": 5.0, "teardown": 2.0}
OTHER_PHASE_FACTOR = 5.0


@dataclass(frozen=True)
class HangTimeout:
    """``auto``, ``off``, or a fixed number of seconds (the --hang-timeout flag)."""

    mode: Literal["auto", "off", "fixed"]
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> HangTimeout:
        """Raises ValueError with the accepted forms for anything else."""
        if text in ("auto", "off"):
            return cls(text)  # type: ignore[arg-type]
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"'{text}' is not auto, off or a number of seconds") from None
        if not seconds > 0:
            raise ValueError(f"'{text}' is not a positive number of seconds")
        return cls("fixed", seconds)

    def __str__(self) -> str:
        return self.mode if self.mode != "fixed" else f"{self.seconds:g}"

    def describe(self) -> str:
        """The line the agent prints at start."""
        if self.mode == "off":
            return "hang watchdog off (--hang-timeout off)"
        if self.mode == "fixed":
            others = ", ".join(f"{phase} {factor * self.seconds:g} s" for phase, factor in PHASE_FACTOR.items())
            return (f"hang watchdog: train {self.seconds:g} s without progress, {others}; from a program that "
                    f"reports none, {self.seconds:g} s without output")
        floors = ", ".join(f"{phase} {floor:g} s" for phase, floor in PHASE_FLOOR_S.items())
        return (f"hang watchdog auto: train max({TRAIN_FLOOR_S:g} s, {AUTO_FACTOR:g} x p95 step time); {floors} "
                f"(or {AUTO_FACTOR:g} x the longest seen); off for a program that reports no progress")


def allowance(timeout: HangTimeout, phase: str | None, step_p95: float, longest: float,
              steps_done: float = 1) -> float | None:
    """Seconds a rank in ``phase`` may go without progress (None: never a hang).

    The first step counts as startup: it may compile, or allocate for minutes on a large model.
    """
    if timeout.mode == "off":
        return None
    if phase == "train" and steps_done == 0:
        phase = "startup"
    if timeout.mode == "fixed":
        return timeout.seconds * (1.0 if phase == "train" else PHASE_FACTOR.get(phase or "", OTHER_PHASE_FACTOR))
    if phase == "train":
        return max(TRAIN_FLOOR_S, AUTO_FACTOR * step_p95)
    return max(PHASE_FLOOR_S.get(phase or "", OTHER_PHASE_FLOOR_S), AUTO_FACTOR * longest)


@dataclass(frozen=True)
class Silent:
    """A rank that made no progress for longer than its allowance."""

    rank: int
    seconds: float
    allowance: float
    progress: RankProgress | None


@dataclass
class Watchdog:
    """One attempt's view of this node's ranks; ``check`` returns the hung ones, if any."""

    timeout: HangTimeout
    pids: dict[int, int]
    started: float
    # Wall time a rank's current phase began, and the longest each phase took, across ranks.
    _phase_since: dict[int, tuple[str | None, float]] = field(default_factory=dict)
    _longest: dict[str, float] = field(default_factory=dict)

    def current(self, records: Mapping[int, RankProgress | None]) -> dict[int, RankProgress]:
        """The reports that belong to this attempt's processes (a restarted rank's old file does not)."""
        return {rank: r for rank, r in records.items()
                if r is not None and r.updated >= self.started - 1 and r.pid in (None, self.pids.get(rank))}

    def check(self, records: Mapping[int, RankProgress | None], last_output: float, now: float) -> list[Silent]:
        reports = self.current(records)
        for rank, record in reports.items():
            phase, since = self._phase_since.get(rank, (None, self.started))
            if record.phase != phase:
                if phase is not None:
                    self._longest[phase] = max(self._longest.get(phase, 0.0), record.updated - since)
                self._phase_since[rank] = (record.phase, record.updated)
        if not reports:
            # A program that reports nothing: only a fixed timeout applies, to the node's output.
            if self.timeout.mode != "fixed" or now - max(self.started, last_output) <= self.timeout.seconds:
                return []
            return [Silent(rank, now - max(self.started, last_output), self.timeout.seconds, None)
                    for rank in sorted(self.pids)]
        step_p95 = max((r.stats.get("step_p95", 0.0) for r in reports.values()), default=0.0)
        silent = []
        for rank, record in sorted(reports.items()):
            limit = allowance(self.timeout, record.phase, step_p95, self._longest.get(record.phase or "", 0.0),
                              record.stats.get("steps", 1))
            if limit is not None and now - record.updated > limit:
                silent.append(Silent(rank, now - record.updated, limit, record))
        return silent


def last_output(paths: list[str]) -> float:
    """When any of the workers' log files last grew (0.0 when none exists)."""
    times = []
    for path in paths:
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)
