"""A restart's phases from a ``$GANGRUN_TIMELINE`` file: where the seconds from a SIGKILL to the next first step go.

The agent and every rank append one JSON line per moment (launcher/agent/timeline.py,
train/timeline.py); the bench adds the kill. A phase ends when its last rank got there: the
collectives after it wait for that rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# (phase, whose mark ends it, the mark, the attempt it belongs to: the killed one or the next).
# torchrun sees the dead worker at its next poll (every 0.1 s) and, in that same poll, stops the others
# and waits for them to exit: the agent hears of the failure only then, so one phase holds both.
PHASES = (
    ("notice and stop", "agent", "failure seen", "killed"),
    ("rendezvous", "agent", "rendezvous done", "next"),
    ("interpreter up", "ranks", "up", "next"),
    ("import torch", "ranks", "torch imported", "next"),
    ("import program", "ranks", "program imported", "next"),
    ("process group", "ranks", "process group", "next"),
    ("model and data", "ranks", "resume", "next"),
    ("load checkpoint", "ranks", "train", "next"),
    ("first step", "ranks", "first step", "next"),
)


@dataclass(frozen=True)
class Mark:
    """One line of the timeline: who (``agent``, ``rankN``, ``bench``) got where, when, in which attempt."""

    t: float
    who: str
    pid: int
    attempt: int
    mark: str


@dataclass(frozen=True)
class Recovery:
    """Seconds per phase (in PHASES order) from the kill to the first step after resuming, and their sum."""

    phases: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def read_marks(path: Path) -> list[Mark]:
    if not path.is_file():
        return []
    return [Mark(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def rank_pids(marks: list[Mark], attempt: int) -> dict[int, int]:
    """Each rank's pid in ``attempt``, from its marks."""
    return {int(m.who.removeprefix("rank")): m.pid for m in marks if m.who.startswith("rank") and m.attempt == attempt}


def reached(marks: list[Mark], attempt: int, what: str, ranks: int) -> float | None:
    """When every one of ``ranks`` ranks had first marked ``what`` in ``attempt`` (the last of them), else None.

    A phase is marked again each time a rank re-enters it (``train`` after every save and eval).
    """
    times: dict[str, float] = {}
    for m in marks:
        if m.who.startswith("rank") and m.attempt == attempt and m.mark == what:
            times[m.who] = min(m.t, times.get(m.who, m.t))
    return max(times.values()) if len(times) == ranks else None


def recovery(marks: list[Mark], killed_at: float, killed_attempt: int, ranks: int) -> Recovery:
    """The phases of the restart after a kill at ``killed_at`` in ``killed_attempt``; ValueError naming
    the first moment missing from the timeline."""
    phases: dict[str, float] = {}
    since = killed_at
    for phase, whose, what, which in PHASES:
        attempt = killed_attempt if which == "killed" else killed_attempt + 1
        if whose == "agent":
            times = [m.t for m in marks if m.who == "agent" and m.attempt == attempt and m.mark == what
                     and m.t >= since]
            end = min(times) if times else None
        else:
            end = reached(marks, attempt, what, ranks)
        if end is None:
            raise ValueError(f"timeline: no '{what}' of {whose} in attempt {attempt} after the kill")
        phases[phase] = end - since
        since = end
    return Recovery(phases)
