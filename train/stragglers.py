"""Which rank is slow: its own compute per step against the median of the others', and the per-rank table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

# A rank whose compute per step is at least this many times the others' median is named.
STRAGGLER_RATIO = 1.5


@dataclass(frozen=True)
class Straggler:
    rank: int
    ratio: float
    seconds: float
    others_seconds: float

    def describe(self) -> str:
        return (f"rank {self.rank} computes {self.ratio:.1f}x the other ranks' median "
                f"({self.seconds * 1e3:.1f} ms vs {self.others_seconds * 1e3:.1f} ms per step)")


def find_straggler(computes: list[float], ratio: float = STRAGGLER_RATIO) -> Straggler | None:
    """The slowest rank, if its compute is ``ratio`` times the median of every other rank's.

    Leave-one-out, so two ranks compare with each other rather than with their own mean.
    """
    if len(computes) < 2:
        return None
    slowest = max(range(len(computes)), key=computes.__getitem__)
    others = statistics.median(c for r, c in enumerate(computes) if r != slowest)
    if others <= 0 or computes[slowest] < ratio * others:
        return None
    return Straggler(slowest, computes[slowest] / others, computes[slowest], others)


def rank_table(rows: list[dict[str, Any]]) -> str:
    """One line per rank: host, steps, step time p50/p95, compute p50 and time waiting on peers."""
    lines = ["ranks:  rank  host                  steps   step p50   step p95  compute p50   waiting"]
    for row in rows:
        lines.append(f"        {row['rank']:>4}  {str(row['host'])[:20]:<20}  {int(row['steps']):>5}  "
                     f"{row['step_p50'] * 1e3:>7.1f}ms  {row['step_p95'] * 1e3:>7.1f}ms  "
                     f"{row['compute_p50'] * 1e3:>9.1f}ms  {row['wait_s']:>7.1f}s")
    return "\n".join(lines)
