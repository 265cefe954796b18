"""Preemption signals: note SIGTERM/SIGUSR2, agree across ranks at a step boundary, exit 75 to be requeued.

The contract with every engine: a rank that receives SIGTERM or SIGUSR2 only sets a flag. At the
next optimizer-step boundary all ranks all-reduce the flag, so if any rank was signalled they all
save the same checkpoint together, and the program exits with ``EXIT_REQUEUE`` (75, EX_TEMPFAIL
from sysexits.h): "stopped on purpose, state saved, start me again with the same command".
Slurm requeues on it (preemption, ``--signal``), Kubernetes sees a graceful pod shutdown, and the
launcher must not count it as a crash to restart in place.

SIGINT (Ctrl-C, which gangrun and torchrun pass on to the workers) stops the same way, so an
interrupted local run resumes from where it stopped; a second SIGINT interrupts at once.

SIGUSR1 is left alone because NCCL uses it. The handler never saves: saving (collectives, I/O)
inside a signal handler hangs (Lightning#21406).
"""

from __future__ import annotations

import signal
from types import FrameType

import torch
import torch.distributed as dist

from train.distributed import World

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class StopFlag:
    """Remembers the first stop signal this rank received; ranks agree on it with ``agreed``."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

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

    def agreed(self, world: World) -> bool:
        """True on every rank when any rank was signalled: one small all-reduce per step."""
        local = self.signum is not None
        if not dist.is_initialized():
            return local
        flag = torch.tensor([int(local)], dtype=torch.int32, device=world.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a peer rank's signal"
