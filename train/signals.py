"""Preemption signals: note SIGTERM/SIGUSR2, agree across ranks at a step boundary, exit 75 to be requeued.

The contract with every engine: a rank that receives SIGTERM or SIGUSR2 only sets a flag. At an
optimizer-step boundary all ranks all-reduce the flag (every step, or every few steps when steps
are shorter than ``CHECK_INTERVAL_S``), so if any rank was signalled they all save the same
checkpoint together, and the program exits with ``EXIT_REQUEUE`` (75, EX_TEMPFAIL
from sysexits.h): "stopped on purpose, state saved, start me again with the same command".
Slurm requeues on it (preemption, ``--signal``), Kubernetes sees a graceful pod shutdown, and the
launcher must not count it as a crash to restart in place.

SIGINT (Ctrl-C, which gangrun and torchrun pass on to the workers) stops the same way, so an
interrupted local run resumes from where it stopped; a second SIGINT interrupts at once.

SIGUSR1 is left alone because NCCL uses it. The handler never saves: saving (collectives, I/O)
inside a signal handler hangs (Lightning#21406).
"""

from __future__ import annotations

import math
import signal
from types import FrameType

import torch
import torch.distributed as dist

from train.distributed import World

EXIT_REQUEUE = 75
# Ranks agree on a stop at least this often, or every step when a step takes longer: the stop
# comes within max(one step, 0.1 s) of the signal, and the agreement costs under 1 % of the time.
CHECK_INTERVAL_S = 0.1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopFlag:
    """Remembers the first stop signal this rank received; ranks agree on it with ``agreed``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        # Steps between agreements; the same on every rank (see pace).
        self.every = 1

    def install(self) -> StopFlag:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._note)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def pace(self, step_seconds: float) -> None:
        """Agree every step when steps are slow, and about every ``CHECK_INTERVAL_S`` when fast.

        The all-reduce costs a fixed ~0.2 ms on CPU gloo, 9 % of a 10 ms step (measured with
        bench/bench_loop.py). ``step_seconds`` must be the same on every rank (an all-reduced
        mean), so that all ranks agree at the same steps.
        """
        self.every = max(1, math.ceil(CHECK_INTERVAL_S / max(step_seconds, 1e-9)))

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def agreed(self, world: World) -> bool:
        """True on every rank when any rank was signalled: one small all-reduce."""
        local = self.signum is not None
        if not dist.is_initialized():
            return local
        flag = torch.tensor([int(local)], dtype=torch.int32, device=world.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a peer rank's signal"
