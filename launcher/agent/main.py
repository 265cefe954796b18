"""The agent's run: torchrun's own ``run`` in-process, with gangrun's hooks, exit codes and verdict."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import run as torchrun_run

from launcher.agent.guard import AFTER_FAILURE_GRACE_S, NodeGuard, split_agent_args
from launcher.agent.oom import OomWatch
from launcher.agent.preflight import preflight_or_exit
from launcher.agent.procstat import started_after
from launcher.agent.requeue import RequeuePolicy, stopped_status
from launcher.agent.timeline import mark
from launcher.agent.torchlog import fold_torchrun_failure_lines
from launcher.agent.verdict import failure_verdict, hang_verdict, stopped_verdict
from launcher.compat import (
    agent_class,
    hooked_agent_class,
    parse_torchrun_args,
    prompt_log_tails,
    worker_stderrs,
)
from launcher.contract import (
    EXIT_HANG,
    EXIT_OK,
    EXIT_REQUEUE,
    EXPECTED_WORLD_ENV,
    PG_TIMEOUT_ENV,
    SHIPPED_PROGRAM,
    ignore_stop_signals,
)
from launcher.verdict import Verdict, render, write_verdict


def protect_shipped_program(args: argparse.Namespace, environ: MutableMapping[str, str] = os.environ) -> None:
    """Run ``-m train`` with Python's safe path, so a train.py in the working directory cannot shadow it.

    torchrun starts workers as ``python -u -m train``, which puts the working directory first on
    sys.path; PYTHONSAFEPATH=1 (Python 3.11+, read by the workers it starts) leaves it off. Only
    for the shipped program: a user's own ``-m pkg`` keeps torchrun's meaning, found from the
    working directory.
    """
    if args.module and args.training_script == SHIPPED_PROGRAM:
        environ["PYTHONSAFEPATH"] = "1"


@dataclass
class Hooks:
    """launcher.compat.AgentHooks: the requeue policy and the node guard together."""

    policy: RequeuePolicy
    guard: NodeGuard
    _told: set[int] = field(default_factory=set)
    # The current attempt's worker log files: a failed worker's traceback is read from its stderr.
    outputs: list[str] = field(default_factory=list)
    # torchrun's restart count of the workers now running.
    attempt: int = 0

    def stop_within_s(self, exit_codes: list[int | None]) -> int:
        """A stop (a worker's 75, or the notice) gets the stop grace: the others may still be saving.
        A crash gets the failure grace: the others have nothing to save and may sit in a wait for the dead."""
        if self.policy.notice is not None or EXIT_REQUEUE in exit_codes:
            return self.guard.settings.stop_grace_s
        return AFTER_FAILURE_GRACE_S

    def workers_starting(self, attempt: int) -> None:
        self.attempt = attempt
        mark("rendezvous done", attempt)

    def watch(self, group: WorkerGroup, outputs: list[str]) -> RunResult | None:
        self.outputs = outputs
        self._pass_on_notice(group)
        return self.guard.watch(group, outputs)

    def _pass_on_notice(self, group: WorkerGroup) -> None:
        """Workers started after the notice (it came during the rendezvous) never saw it: tell them; every
        worker, where the scheduler's notice reaches the agent alone (AgentSettings.pass_notice)."""
        if self.policy.notice is None:
            return
        for worker in group.workers:
            pid = worker.id
            if isinstance(pid, int) and pid not in self._told and (
                    self.guard.settings.pass_notice or started_after(pid, self.policy.noticed_at)):
                self._told.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, self.policy.notice)

    def stop_restarting(self, result: RunResult) -> bool:
        if result.state == WorkerState.FAILED:
            mark("failure seen", self.attempt)
        return self.policy.stop_restarting(result)

    def drain(self, death_sig: signal.Signals, pids: list[int]) -> None:
        self.guard.drain(death_sig, pids)

    def after_shutdown(self, exit_codes: list[int | None]) -> None:
        self.policy.after_shutdown(exit_codes)


def _stop_torchrun(signum: int, _frame: object) -> None:
    # What torchrun's own handler does once its workers run: it stops the agent and its workers.
    raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))


def _stopped_while_starting(noted: list[int]) -> int:
    print(f"gangrun: agent got {signal.Signals(noted[0]).name} while starting; nothing ran, exiting "
          f"{EXIT_REQUEUE}", file=sys.stderr, flush=True)
    return EXIT_REQUEUE


def publish_verdict(guard: NodeGuard, verdict: Verdict) -> None:
    """This node's verdict for `gangrun run`, `status` and `logs`, next to its published ranks."""
    if guard.settings.status_dir is None:
        return
    try:
        write_verdict(guard.settings.status_dir, guard.node, verdict)
    except OSError as err:
        print(f"gangrun: could not write the verdict to {guard.settings.status_dir}: {err}", file=sys.stderr)


def main(argv: list[str] | None = None, noted: list[int] | None = None) -> int:
    """Run one node's agent; returns the first failed worker's code, 75 for "requeue me", 124 for a hang, or 0.

    ``noted``: stop signals that arrived while the agent started (before torch was imported).
    """
    noted = noted if noted is not None else []
    policy = RequeuePolicy()
    policy.outlive_notice()
    # Until the guard exists, a stop is only noted: raised here, torchrun's SignalException would end
    # the agent with a traceback and 1 instead of "nothing ran, requeue me".
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: noted.append(received))
    if noted:
        return _stopped_while_starting(noted)
    settings, torchrun_argv = split_agent_args(sys.argv[1:] if argv is None else argv)
    args = parse_torchrun_args(torchrun_argv)
    protect_shipped_program(args)
    # The world the job asked for, which every rank checks against the one it joined (train/world.py).
    os.environ[EXPECTED_WORLD_ENV] = f"{args.nnodes}/{args.nproc_per_node}"
    if settings.pg_timeout_s is not None:
        os.environ[PG_TIMEOUT_ENV] = str(settings.pg_timeout_s)
    preflight_or_exit(args)
    guard = NodeGuard(settings)
    guard.announce()
    # Before any worker starts: a later rise in the cgroup's OOM kills is theirs (launcher.agent.oom).
    oom = OomWatch.start()
    fold_torchrun_failure_lines()
    hooks = Hooks(policy, guard)
    try:
        # From here until torchrun installs its own: during the rendezvous, a stop ends the agent as it would later.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _stop_torchrun)
        if noted:
            return _stopped_while_starting(noted)
        with agent_class(hooked_agent_class(hooks)), prompt_log_tails():
            torchrun_run(args)
        # Every worker finished: 0 is decided, whatever stop arrives from here to the exit.
        ignore_stop_signals()
        guard.summary()
    except ChildFailedError as err:
        # The workers are gone and their codes decide: a second stop (Slurm signals again) must not
        # raise torchrun's SignalException in the middle of this branch.
        ignore_stop_signals()
        if guard.hang is not None:
            print(f"gangrun: exiting {EXIT_HANG} (hang); {guard.hang.line.removeprefix('gangrun: ')}",
                  file=sys.stderr, flush=True)
            publish_verdict(guard, hang_verdict(guard.hang.culprits, guard.hang.line, guard.host, time.time()))
            return EXIT_HANG
        if policy.all_stopped([f.exitcode for f in err.failures.values()]):
            print(f"gangrun: workers stopped on a stop signal; exiting {EXIT_REQUEUE} (requeue me)",
                  file=sys.stderr, flush=True)
            publish_verdict(guard, stopped_verdict(EXIT_REQUEUE, guard.host, time.time(),
                                                   "the ranks stopped on a stop signal and saved"))
            return EXIT_REQUEUE
        verdict = failure_verdict(err, guard.host, oom, worker_stderrs(hooks.outputs))
        if not settings.verdict_to_launcher:
            print(render(verdict), file=sys.stderr, flush=True)
        publish_verdict(guard, verdict)
        return verdict.code
    except SignalException as err:
        # torchrun stopped its workers because it was signalled: their codes say what that means.
        ignore_stop_signals()
        status, why = stopped_status(policy.exit_codes)
        print(f"gangrun: agent stopped by {err.sigval.name}; {why}, exiting {status}", file=sys.stderr, flush=True)
        if status != EXIT_OK:
            publish_verdict(guard, stopped_verdict(status, guard.host, time.time(),
                                                   f"the agent was stopped by {err.sigval.name}; {why}"))
        return status
    finally:
        guard.close()
    return EXIT_OK
