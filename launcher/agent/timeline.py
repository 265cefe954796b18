"""The agent's moments for bench/bench_recovery.py: one JSON line each in ``$GANGRUN_TIMELINE``; unset, nothing.

A failure seen, a rendezvous done: in the same file as its ranks' moments
(train/timeline.py), so the bench can tell where a restart's seconds go.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from launcher.contract import TIMELINE_ENV


def mark(what: str, attempt: int, environ: Mapping[str, str] = os.environ) -> None:
    """Append ``what`` for this agent's ``attempt`` (torchrun's restart count) with the time."""
    path = environ.get(TIMELINE_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "who": "agent", "pid": os.getpid(), "attempt": attempt, "mark": what})
    # One write of one short line to a file opened for appending: lines from many processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
