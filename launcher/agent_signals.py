"""The agent's side of preemption: outlive the notice signal, and hand a worker's exit 75 to the engine.

Used on every target: Slurm's USR2 notice, and SIGTERM from Kubernetes or `gangrun run`.

Slurm sends ``--signal=USR2@grace`` (and ``scancel --signal=USR2``) to every process of the job's
steps: the agent and each worker (measured on Slurm 22.05, proctrack/linuxproc). Measured with
torch 2.14 and a worker that saves and exits 75 on USR2 (tests/test_agent_signals.py):
- plain torchrun has no USR2 handler: the notice kills it (srun reports 140); its workers save but
  are orphaned and their 75 reaches nobody.
- ``torchrun --signals-to-handle=...,SIGUSR2`` SIGTERMs the workers and exits 1: the 75 is lost.
- USR2 to the workers only, with ``--max-restarts=2``: torchrun restarts the group after the 75
  and trains on inside an allocation about to end; the engine never gets to requeue.
So the agent notes USR2 and carries on, and a worker's 75 ends the run with 75, restarts or not.
The agent does not pass USR2 on: Slurm already signals every worker, and a second USR2 that lands
while a worker exits 75 kills it (Python restores default handlers at shutdown), exit 140 (measured).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

# Training's "I saved; requeue me" (train/signals.py EXIT_REQUEUE; launcher never imports train).
EXIT_REQUEUE = 75
NOTICE_SIGNAL = signal.SIGUSR2


_requeue_after_shutdown = False


def requeue_after_shutdown() -> bool:
    """Whether a signalled agent's workers saved and exited 75 while it shut them down."""
    return _requeue_after_shutdown


class RequeueAwareAgent(LocalElasticAgent):
    """torchrun's agent, except that a worker's exit 75 stops the run instead of restarting the group,
    and survives the agent's own shutdown on SIGTERM (torchrun then raises and exits 1 or 143)."""

    def _shutdown(self, *args, **kwargs) -> None:
        global _requeue_after_shutdown
        super()._shutdown(*args, **kwargs)
        handlers = getattr(self._pcontext, "subprocess_handlers", None) or {}
        if any(h.proc.returncode == EXIT_REQUEUE for h in handlers.values()):
            _requeue_after_shutdown = True

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if result.is_failed() and any(f.exitcode == EXIT_REQUEUE for f in result.failures.values()):
            # torchrun has no hook for this; its run loop restarts while restarts remain.
            self._remaining_restarts = 0
        return result


def _note_notice(signum: int, _frame: FrameType | None) -> None:
    print(f"gangrun: agent got {signal.Signals(signum).name}: workers save at the next step and exit "
          f"{EXIT_REQUEUE}", file=sys.stderr, flush=True)


def install_requeue_handling() -> None:
    """Call before torchrun's main. A handler, not SIG_IGN: exec resets handlers, so workers start
    with USR2's default action until training installs its own, instead of silently ignoring it."""
    signal.signal(NOTICE_SIGNAL, _note_notice)
    # launch_agent builds LocalElasticAgent by its module-level name and takes no agent class.
    launcher_api.LocalElasticAgent = RequeueAwareAgent  # type: ignore[misc]
