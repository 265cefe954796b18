"""Preemption: the ranks agree on a noted stop signal at a step boundary, save, and exit 75 to be requeued.

The contract with every engine: a rank that receives one of train.contract.STOP_SIGNALS only sets a
flag (train.notice, installed before torch is even imported). At optimizer-step boundaries all ranks
all-reduce the flag, so if any rank was signalled they all save the same checkpoint together, and the
program exits EXIT_REQUEUE: "stopped on purpose, state saved, start me again with the same command".
Slurm requeues on it (preemption, ``--signal``), Kubernetes sees a graceful pod shutdown, and the
launcher does not count it as a crash to restart in place. A stop noted before training (imports,
data, model build, resume) is agreed on once each of those is done, and exits 75 without saving:
no step was taken since the newest commit.

SIGINT (Ctrl-C, which gangrun and torchrun pass on to the workers) stops the same way, so an
interrupted local run resumes from where it stopped; a second SIGINT interrupts at once.

SIGUSR1 is left alone because NCCL uses it. The handler never saves: saving (collectives, I/O)
inside a signal handler hangs (Lightning#21406).
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist

from train.distributed import World
from train.notice import NOTICE

# Ranks agree on a stop at least this often, or every step when a step takes longer: the stop
# comes within max(one step, 0.1 s) of the signal. The all-reduce costs a fixed ~0.2 ms on CPU
# gloo, 9 % of a 10 ms step if done every step (measured with bench/bench_loop.py).
CHECK_INTERVAL_S = 0.1


class StopFlag:
    """When the ranks agree on the process's stop notice (train.notice.NOTICE).

    It paces itself: each agreement also sums every rank's mean step time since the last one, so
    all ranks compute the same next step to agree at, and no rank waits in a collective alone.
    Outside ``python -m train`` (a test calling fit) it installs the notice for its own lifetime.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] | None = None
        self._steps = 0
        self._next_check = 1
        self._last_check_step = 0
        self._last_check_time = time.perf_counter()

    def __enter__(self) -> StopFlag:
        if not NOTICE.installed:
            self._previous = NOTICE.install()
        self._last_check_time = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._previous is not None:
            NOTICE.uninstall(self._previous)
            self._previous = None

    def agreed(self, world: World) -> bool:
        """True on every rank once any rank noted a stop; every rank must call it at the same point."""
        return self._agree(world, 0.0)[0]

    def requested(self, world: World) -> bool:
        """Call once per optimizer step on every rank: True on all of them once any rank was signalled."""
        self._steps += 1
        if self._steps < self._next_check:
            return False
        now = time.perf_counter()
        step_seconds = (now - self._last_check_time) / (self._steps - self._last_check_step)
        self._last_check_step, self._last_check_time = self._steps, now
        signalled, seconds = self._agree(world, step_seconds)
        self._next_check = self._steps + max(1, math.ceil(CHECK_INTERVAL_S / max(seconds, 1e-9)))
        return signalled

    def _agree(self, world: World, step_seconds: float) -> tuple[bool, float]:
        """(any rank signalled, the mean of the ranks' ``step_seconds``), in one all-reduce."""
        signalled, seconds = float(NOTICE.received), step_seconds
        if dist.is_initialized():
            summed = torch.tensor([signalled, step_seconds], dtype=torch.float64, device=world.device)
            dist.all_reduce(summed)
            signalled, seconds = summed[0].item(), summed[1].item() / world.world_size
        return signalled > 0, seconds

    @property
    def name(self) -> str:
        return NOTICE.name
