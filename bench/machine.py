"""How much CPU other work took on this machine while a measurement ran, so a repeat that shared the cores says so.

The machine's busy CPU time (/proc/stat) less what this process and its waited-for descendants used
(getrusage): on a machine others share, a slow repeat beside seconds of others' CPU is their load,
one beside none is ours.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

# /proc/stat's first line: cpu user nice system idle iowait irq softirq steal ...
_IDLE_FIELDS = (3, 4)


def busy_cpu_s(stat: str | None = None) -> float:
    """Seconds of CPU every core of the machine spent busy since boot (not idle, not waiting for I/O)."""
    first = (stat if stat is not None else Path("/proc/stat").read_text()).splitlines()[0].split()
    ticks = [int(value) for value in first[1:]]
    idle = sum(ticks[i] for i in _IDLE_FIELDS)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """Seconds of CPU this process and its descendants that were waited for have used."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class OthersCpu:
    """Started at construction; ``seconds()`` is the CPU time other work took since."""

    busy_at_start: float
    own_at_start: float

    @classmethod
    def start(cls) -> OthersCpu:
        return cls(busy_cpu_s(), own_cpu_s())

    def seconds(self) -> float:
        return max(0.0, (busy_cpu_s() - self.busy_at_start) - (own_cpu_s() - self.own_at_start))
