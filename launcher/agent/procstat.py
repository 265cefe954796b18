"""A process's state and start time, read from ``/proc/PID/stat`` in one place."""

from __future__ import annotations

import os
import time
from pathlib import Path


def stat_fields(pid: int) -> list[str] | None:
    """The fields after the command name (which may hold spaces and parentheses), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def process_state(pid: int) -> str:
    """The one-letter state (R, S, D, T, Z...), or "?" when it is gone."""
    fields = stat_fields(pid)
    return fields[0] if fields else "?"


def started_after(pid: int, moment: float) -> bool:
    """Whether process ``pid`` started after wall time ``moment`` (its start is in clock ticks since boot)."""
    fields = stat_fields(pid)
    try:
        ticks = int(fields[19]) if fields else None
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if ticks is None:
        return False
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK") > moment
