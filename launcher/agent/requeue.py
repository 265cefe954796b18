"""The agent's side of preemption: outlive the notice signal, and hand a worker's exit 75 to the engine.

Used on every engine: Slurm's USR2 notice, and SIGTERM from Kubernetes or `gangrun run`.

Slurm sends ``--signal=USR2@grace`` (and ``scancel --signal=USR2``) to every process of the job's
steps: the agent and each worker (measured on Slurm 22.05, proctrack/linuxproc). Measured with
torch 2.14 and a worker that saves and exits 75 on USR2 (tests/test_agent_signals.py):
- plain torchrun has no USR2 handler: the notice kills it (srun reports 140); its workers save but
  are orphaned and their 75 reaches nobody.
- ``torchrun --signals-to-handle=...,SIGUSR2`` SIGTERMs the workers and exits 1: the 75 is lost.
- USR2 to the workers only, with ``--max-restarts=2``: torchrun restarts the group after the 75
  and trains on inside an allocation about to end; the engine never gets to requeue.
So the agent notes USR2 and carries on, and a worker's 75 ends the run with 75, restarts or not.
The agent does not pass USR2 on to workers that were running: Slurm already signals every worker.
Workers it starts after the notice (it came during the rendezvous) get it from the agent, and so
does every worker where the notice reaches the agent alone (``--pass-notice``: podman under Slurm).
"""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

from torch.distributed.elastic.agent.server.api import RunResult

from launcher.contract import EXIT_BAD_INPUT, EXIT_OK, EXIT_REQUEUE, NOTICE_SIGNAL


class RequeuePolicy:
    """torchrun's agent hooks (launcher.compat.AgentHooks, in part): a worker's exit 75 stops the run
    instead of restarting the group, and after a stop signal the workers' codes become the agent's.

    A user's script without a handler dies of the notice; the agent that received it reports 75
    for it, so the engine requeues rather than drops the job.
    """

    def __init__(self) -> None:
        self.workers_saved = False
        self.notice: signal.Signals | None = None
        self.noticed_at = 0.0
        self.exit_codes: list[int | None] = []

    def note_notice(self, signum: int, _frame: FrameType | None) -> None:
        self.notice, self.noticed_at = signal.Signals(signum), time.time()
        print(f"gangrun: agent got {self.notice.name}: workers save at the next step and exit "
              f"{EXIT_REQUEUE}", file=sys.stderr, flush=True)

    def all_stopped(self, codes: list[int]) -> bool:
        """Every failure is a stop: all saved (75). After the notice any failure is one: a script without
        a handler dies of it, its peers of the lost peer, and the allocation is about to end anyway,
        so the job is requeued rather than restarted in place. Without a notice, one crash among them
        (a killed rank; torchrun then SIGTERMs its peers, which exit 75) is a crash to restart."""
        if not codes:
            return False
        return self.notice is not None or all(code == EXIT_REQUEUE for code in codes)

    def stop_restarting(self, result: RunResult) -> bool:
        return result.is_failed() and self.all_stopped([f.exitcode for f in result.failures.values()])

    def after_shutdown(self, exit_codes: list[int | None]) -> None:
        self.exit_codes = exit_codes
        if EXIT_REQUEUE in exit_codes:
            self.workers_saved = True

    def outlive_notice(self) -> None:
        """Call before torchrun starts. A handler, not SIG_IGN: exec resets handlers, so workers start
        with USR2's default action until training installs its own, instead of silently ignoring it."""
        signal.signal(NOTICE_SIGNAL, self.note_notice)


def stopped_status(exit_codes: list[int | None]) -> tuple[int, str]:
    """The agent's exit status after it was signalled, from its workers' codes, and why.

    Workers that all finished make it 0: the run was done before the stop. Bad input stays 2.
    Anything else was stopped mid-run and asks to be started again: 75.
    """
    codes = [c for c in exit_codes if c is not None]
    if codes and all(c == EXIT_OK for c in codes):
        return EXIT_OK, "the workers had already finished"
    if EXIT_REQUEUE in codes:
        return EXIT_REQUEUE, "workers saved"
    if EXIT_BAD_INPUT in codes:
        return EXIT_BAD_INPUT, "a worker refused its input"
    return EXIT_REQUEUE, "workers stopped before saving; the newest commit stands"
