"""Moments of a rank's start for bench/bench_recovery.py: one JSON line each in ``$GANGRUN_TIMELINE``; unset, nothing.

Every process of a job (the node agent too, launcher/agent/timeline.py) appends to the same file, with
wall-clock times (one clock for every process on a machine), so the bench can tell where a restart's
seconds go: interpreter up, torch imported, process group joined, model built, checkpoint loaded,
first step done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping

from train.progress import Progress

# launcher/contract.py spells the same name for the agent (tests/test_timeline.py keeps them equal).
TIMELINE_ENV = "GANGRUN_TIMELINE"


def mark(what: str, environ: Mapping[str, str] = os.environ) -> None:
    """Append ``what`` with this rank, its attempt and the time; a no-op without ``$GANGRUN_TIMELINE``."""
    path = environ.get(TIMELINE_ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "who": f"rank{environ.get('RANK', '0')}", "pid": os.getpid(),
                       "attempt": int(environ.get("TORCHELASTIC_RESTART_COUNT", "0")), "mark": what})
    # One write of one short line to a file opened for appending: lines from many processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class MarkedProgress(Progress):
    """A Progress that also marks each phase it enters and the first step done."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        super().__init__(environ)
        self.environ = environ

    def phase(self, name: str, step: int | None = None) -> None:
        super().phase(name, step)
        mark(name, self.environ)

    def step_done(self, step: int, step_s: float, compute_s: float) -> None:
        super().step_done(step, step_s, compute_s)
        if self.steps_done == 1:
            mark("first step", self.environ)


def progress(environ: Mapping[str, str] = os.environ) -> Progress:
    """This rank's Progress, marked when ``$GANGRUN_TIMELINE`` is set."""
    return MarkedProgress(environ) if environ.get(TIMELINE_ENV) else Progress(environ)
