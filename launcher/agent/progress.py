"""Every local rank's progress, read from the files the ranks rewrite (the README's progress protocol).

A rank reports by overwriting ``$GANGRUN_PROGRESS_DIR/rank$RANK`` with one JSON line; only ``step``
and ``phase`` are asked of a program, and each write counts as progress. The training program adds
its pid, host, wall time and recent step times (train/progress.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RankProgress:
    """The last report of one rank."""

    rank: int
    updated: float
    step: int | None = None
    phase: str | None = None
    pid: int | None = None
    host: str | None = None
    stats: dict[str, float] = field(default_factory=dict)
    out: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "updated": self.updated, "step": self.step, "phase": self.phase,
                "pid": self.pid, "host": self.host, "out": self.out, **self.stats}


STAT_KEYS = ("step_p50", "step_p95", "compute_p50", "compute_p95", "wait_s", "steps")


def parse_record(rank: int, text: str, mtime: float) -> RankProgress | None:
    """One rank's report, or None while it is being rewritten (or is not JSON at all)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None

    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    step, pid, updated = number("step"), number("pid"), number("time")
    return RankProgress(
        rank=rank, updated=updated if updated is not None else mtime,
        step=None if step is None else int(step),
        phase=str(record["phase"]) if "phase" in record else None,
        pid=None if pid is None else int(pid),
        host=str(record["host"]) if "host" in record else None,
        stats={k: v for k in STAT_KEYS if (v := number(k)) is not None},
        out=str(record["out"]) if "out" in record else None)


def progress_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rank{rank}")


def read_rank(directory: str, rank: int) -> RankProgress | None:
    path = progress_path(directory, rank)
    try:
        mtime = os.stat(path).st_mtime
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    return parse_record(rank, text, mtime)
