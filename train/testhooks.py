"""Faults the chaos tests inject into a real run, each switched on by one variable gangrun never sets.

The variables are read once, when the program starts (FAULTS): the hooks run every step and cost a
comparison, not an environment lookup. Each acts in the first attempt only
(TORCHELASTIC_RESTART_COUNT 0), so a restart under ``--max-restarts`` shows the recovery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

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


def _numbers(environ: Mapping[str, str], name: str) -> tuple[float, ...] | None:
    value = environ.get(name)
    return tuple(float(part) for part in value.split(":")) if value else None


@dataclass(frozen=True)
class Faults:
    """The faults this process injects, parsed from its environment."""

    stall: tuple[int, int] | None = None
    slow: tuple[int, float] | None = None
    allocate: tuple[int, int, int] | None = None
    uneven_eval: bool = False
    linger_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        if environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return cls(linger_s=float(environ.get(LINGER_ENV) or 0))
        stall, slow, allocate = (_numbers(environ, name) for name in (STALL_ENV, SLOW_ENV, ALLOCATE_ENV))
        return cls(stall=(int(stall[0]), int(stall[1])) if stall else None,
                   slow=(int(slow[0]), slow[1]) if slow else None,
                   allocate=(int(allocate[0]), int(allocate[1]), int(allocate[2])) if allocate else None,
                   uneven_eval=environ.get(UNEVEN_EVAL_ENV) == "1", linger_s=float(environ.get(LINGER_ENV) or 0))


FAULTS = Faults.from_env(os.environ)


def stall_here() -> None:
    """Where a stalled rank sits, by name, so the hang verdict can point at it."""
    while True:
        time.sleep(1)


def at_step_boundary(rank: int, step: int, faults: Faults = FAULTS) -> None:
    if faults.stall == (rank, step):
        stall_here()
    if faults.allocate is not None and faults.allocate[:2] == (rank, step):
        allocate_here(faults.allocate[2])


def allocate_here(megabytes: int) -> None:
    """Take ``megabytes`` a page at a time, each page written, so the memory is resident, not only promised."""
    for _ in range(megabytes):
        chunk = bytearray(1 << 20)
        chunk[::4096] = b"\x01" * len(range(0, 1 << 20, 4096))
        _held.append(chunk)


def slow_down(rank: int, compute_s: float, faults: Faults = FAULTS) -> float:
    """Sleep so this step's compute takes FACTOR times ``compute_s``; returns the seconds slept."""
    if faults.slow is None or faults.slow[0] != rank:
        return 0.0
    time.sleep((faults.slow[1] - 1) * compute_s)
    return (faults.slow[1] - 1) * compute_s


def extra_eval_batch(rank: int, faults: Faults = FAULTS) -> bool:
    return rank == 1 and faults.uneven_eval


def linger(faults: Faults = FAULTS) -> None:
    if faults.linger_s > 0:
        time.sleep(faults.linger_s)
