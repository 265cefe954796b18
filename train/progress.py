"""This rank's progress for its node's agent: one JSON line rewritten in place, never a collective or a wait.

The agent's hang watchdog and ``gangrun status`` read it (launcher/agent/progress.py). A phase change
is written at once; steps at most every WRITE_INTERVAL_S, so the cost is one small ``pwrite`` per
interval whatever the step time. Without ``$GANGRUN_PROGRESS_DIR`` (a run outside the agent) it does
nothing.
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import socket
import time
from collections import deque
from collections.abc import Mapping
from typing import IO, Any

from train.contract import PROGRESS_DIR_ENV, STACK_SIGNAL

# At most 20 writes a second (~30 us each: under 0.1 % of any step time), at most 50 ms stale.
WRITE_INTERVAL_S = 0.05
# Step times are summarised over this many recent steps.
WINDOW_STEPS = 100
# A record is padded to a multiple of this, so a rewrite is a single pwrite of the whole file.
RECORD_BYTES = 512


def percentile(values: list[float], q: float, ordered: bool = False) -> float:
    """The q-th percentile (0-100) of ``values`` by the nearest-rank rule (0.0 when empty)."""
    if not values:
        return 0.0
    values = values if ordered else sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q / 100 * len(values)) - 1))]


class Progress:
    """Writes ``$GANGRUN_PROGRESS_DIR/rank$RANK``: step, phase, recent step and compute times."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.rank = int(environ.get("RANK", "0"))
        self.step, self.phase_name = 0, "startup"
        self.steps_done = 0
        self.fields: dict[str, Any] = {}
        self._step_s: deque[float] = deque(maxlen=WINDOW_STEPS)
        self._compute_s: deque[float] = deque(maxlen=WINDOW_STEPS)
        self._wait_total_s = 0.0
        self._last_write = 0.0
        self._size = 0
        self._pid, self._host = os.getpid(), socket.gethostname()
        self._fd: int | None = None
        self._stacks: IO[str] | None = None
        directory = environ.get(PROGRESS_DIR_ENV)
        if directory:
            path = os.path.join(directory, f"rank{self.rank}")
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            # The agent's fallback where py-spy may not attach (no ptrace): every thread's stack on a signal.
            self._stacks = open(os.path.join(directory, f"rank{self.rank}.stacks"), "w")  # noqa: SIM115
            faulthandler.register(STACK_SIGNAL, file=self._stacks, all_threads=True)
            self.write()

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def phase(self, name: str, step: int | None = None) -> None:
        """Enter a phase (startup, resume, train, eval, save, teardown); written at once."""
        self.phase_name = name
        if step is not None:
            self.step = step
        self.write()

    def step_done(self, step: int, step_s: float, compute_s: float) -> None:
        """One optimizer step took ``step_s``, of which ``compute_s`` outside the gradient sync."""
        self.step, self.steps_done = step, self.steps_done + 1
        self._step_s.append(step_s)
        self._compute_s.append(compute_s)
        self._wait_total_s += max(0.0, step_s - compute_s)
        if self._fd is not None and time.monotonic() - self._last_write >= WRITE_INTERVAL_S:
            self.write()

    def summary(self) -> dict[str, float]:
        """Recent step and compute times (seconds, p50/p95) and the total time waiting on peers."""
        steps, compute = sorted(self._step_s), sorted(self._compute_s)
        return {"step_p50": percentile(steps, 50, True), "step_p95": percentile(steps, 95, True),
                "compute_p50": percentile(compute, 50, True), "compute_p95": percentile(compute, 95, True),
                "wait_s": self._wait_total_s, "steps": float(self.steps_done)}

    def recent_compute(self, steps: int) -> float:
        """Mean compute seconds over this rank's last ``steps`` steps."""
        recent = list(self._compute_s)[-steps:] if steps > 0 else []
        return sum(recent) / len(recent) if recent else 0.0

    def table_row(self) -> dict[str, Any]:
        """This rank's line of the end-of-run table (see train.stragglers.rank_table)."""
        return {"rank": self.rank, "host": self._host, **self.summary()}

    def record(self) -> dict[str, Any]:
        return {"step": self.step, "phase": self.phase_name, "time": time.time(), "pid": self._pid,
                "host": self._host, **self.summary(), **self.fields}

    def write(self) -> None:
        if self._fd is None:
            return
        self._last_write = time.monotonic()
        line = json.dumps(self.record()).encode() + b"\n"
        # Never shorter than the file: trailing spaces are valid JSON whitespace, so one write of the
        # padded record replaces the old one whole.
        self._size = max(self._size, -(-len(line) // RECORD_BYTES) * RECORD_BYTES)
        os.pwrite(self._fd, line.ljust(self._size), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._stacks is not None:
            faulthandler.unregister(STACK_SIGNAL)
            self._stacks.close()
            self._stacks = None
