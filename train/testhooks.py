"""Faults the chaos tests inject into a real run, each switched on by one variable gangrun never sets.

Each acts in the first attempt only (TORCHELASTIC_RESTART_COUNT 0), so a restart under
``--max-restarts`` shows the recovery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

# "RANK:STEP": that rank stops making progress after STEP, outside any collective (in stall_here).
STALL_ENV = "GANGRUN_TEST_STALL"
# "RANK:FACTOR": that rank's compute (everything but backward) takes FACTOR times as long.
SLOW_ENV = "GANGRUN_TEST_SLOW"
# "S": every rank lingers S seconds in teardown, after the last checkpoint is committed.
LINGER_ENV = "GANGRUN_TEST_LINGER_S"
# "1": rank 1 evaluates one batch more than its peers, the uneven eval that hung FSDP before it was fixed
# (with transformer blocks sharded, as in gpt-tiny, its extra forward all-gathers alone).
UNEVEN_EVAL_ENV = "GANGRUN_TEST_UNEVEN_EVAL"
# "RANK:STEP:MB": after STEP, that rank allocates and touches MB megabytes and holds them (the OOM verdict's test).
ALLOCATE_ENV = "GANGRUN_TEST_ALLOCATE_MB"
_held: list[bytearray] = []


def _first_attempt(environ: Mapping[str, str]) -> bool:
    return environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


def _pair(environ: Mapping[str, str], name: str) -> tuple[int, float] | None:
    value = environ.get(name)
    if not value or not _first_attempt(environ):
        return None
    rank, _, number = value.partition(":")
    return int(rank), float(number)


def stall_here() -> None:
    """Where a stalled rank sits, by name, so the hang verdict can point at it."""
    while True:
        time.sleep(1)


def at_step_boundary(rank: int, step: int, environ: Mapping[str, str] = os.environ) -> None:
    stall = _pair(environ, STALL_ENV)
    if stall is not None and stall == (rank, step):
        stall_here()
    allocate = environ.get(ALLOCATE_ENV)
    if allocate and _first_attempt(environ):
        at_rank, at_step, megabytes = (int(part) for part in allocate.split(":"))
        if (at_rank, at_step) == (rank, step):
            allocate_here(megabytes)


def allocate_here(megabytes: int) -> None:
    """Take ``megabytes`` a page at a time, each page written, so the memory is resident, not only promised."""
    for _ in range(megabytes):
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"\x01" * len(range(0, 1 << 20, 4096))
        _held.append(chunk)


def slow_down(rank: int, compute_s: float, environ: Mapping[str, str] = os.environ) -> float:
    """Sleep so this step's compute takes FACTOR times ``compute_s``; returns the seconds slept."""
    slow = _pair(environ, SLOW_ENV)
    if slow is None or slow[0] != rank:
        return 0.0
    time.sleep((slow[1] - 1) * compute_s)
    return (slow[1] - 1) * compute_s


def extra_eval_batch(rank: int, environ: Mapping[str, str] = os.environ) -> bool:
    return rank == 1 and environ.get(UNEVEN_EVAL_ENV) == "1" and _first_attempt(environ)


def linger(environ: Mapping[str, str] = os.environ) -> None:
    seconds = float(environ.get(LINGER_ENV) or 0)
    if seconds > 0:
        time.sleep(seconds)
