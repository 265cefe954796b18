"""The launcher's one compat module: what torchrun offers no public way to do, kept in one place.

Each use here reaches into torch's elastic agent by a name torch does not promise to keep;
tests/test_compat.py checks every one of those shapes against the installed torch and fails with
a message naming the shape, so an upgrade that moves one breaks a unit test, not a user's job.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch.distributed.elastic.multiprocessing.api as processes_api
import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import PContext
from torch.distributed.elastic.multiprocessing.tail_log import TailLog
from torch.distributed.run import get_args_parser

# The private members of LocalElasticAgent the hooks below use (checked by tests/test_compat.py).
AGENT_MEMBERS = ("_monitor_workers", "_shutdown", "_start_workers", "_remaining_restarts", "_pcontext")
# The public attributes of torchrun's process context those hooks read (also checked there).
PCONTEXT_MEMBERS = ("pids", "stdouts", "stderrs", "subprocess_handlers")
_PREFIX_FLAG = "--log-line-prefix-template="
# How long torchrun's log tailers sleep at the end of a worker's log. Each stop of a worker group
# waits for both tailers (stdout, stderr) to wake, one after the other: with torchrun's 0.1 s, up to
# 0.2 s of every restart and every run's end. At this interval the tailers of 2 ranks add 0.3 % of a
# core to the idle agent's 0.5 % (measured over 20 s).
TAIL_INTERVAL_S = 0.02


class AgentHooks(Protocol):
    """What the node agent adds to torchrun's own elastic agent."""

    def stop_within_s(self, exit_codes: list[int | None]) -> int:
        """Seconds the running workers get to exit when torchrun stops them, given every worker's exit
        code so far (None: still running); then they are killed."""

    def workers_starting(self, attempt: int) -> None:
        """Called when the rendezvous is done and the group's workers are about to start; ``attempt``
        is torchrun's restart count (the workers' TORCHELASTIC_RESTART_COUNT)."""

    def watch(self, group: WorkerGroup, outputs: list[str]) -> RunResult | None:
        """Called while the workers look healthy, with their log files; a failed RunResult ends the attempt
        (torchrun then restarts the group while restarts remain, as for a crash)."""

    def stop_restarting(self, result: RunResult) -> bool:
        """Called after each look at the workers; True ends the run instead of restarting the group."""

    def drain(self, death_sig: signal.Signals, pids: list[int]) -> None:
        """The agent was signalled: pass ``death_sig`` on and wait as long as the workers need, before
        torchrun kills whatever is left."""

    def after_shutdown(self, exit_codes: list[int | None]) -> None:
        """Called once the agent stopped its workers (e.g. on SIGTERM), with their exit codes."""


def hooked_agent_class(hooks: AgentHooks) -> type[LocalElasticAgent]:
    """LocalElasticAgent with ``hooks`` called where torchrun has no hook of its own."""

    class HookedAgent(LocalElasticAgent):
        def _start_workers(self, worker_group: WorkerGroup) -> dict[int, Any]:
            # The count torchrun gives the workers it starts next (its own _start_workers spells it so).
            hooks.workers_starting(worker_group.spec.max_restarts - self._remaining_restarts)
            pids = super()._start_workers(worker_group)
            if self._pcontext is not None:
                bound_stops(self._pcontext, hooks)
            return pids

        def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
            result = super()._monitor_workers(worker_group)
            if result.state == WorkerState.HEALTHY and self._pcontext is not None:
                outputs = [*self._pcontext.stdouts.values(), *self._pcontext.stderrs.values()]
                result = hooks.watch(worker_group, [str(p) for p in outputs if p]) or result
            if hooks.stop_restarting(result):
                # torchrun's run loop restarts the group while restarts remain.
                self._remaining_restarts = 0
            return result

        def _shutdown(self, death_sig: signal.Signals | None = None, timeout: int = 30) -> None:
            # torchrun passes death_sig only when the agent itself was signalled; otherwise it is
            # stopping workers after a failure, a hang or the end (bound_stops bounds the wait).
            if death_sig is None:
                super()._shutdown(signal.SIGTERM, timeout)
            else:
                hooks.drain(death_sig, list(self._pcontext.pids().values()) if self._pcontext else [])
                super()._shutdown(death_sig, 1)
            handlers = getattr(self._pcontext, "subprocess_handlers", None) or {}
            hooks.after_shutdown([h.proc.returncode for h in handlers.values()])

    return HookedAgent


def bound_stops(pcontext: PContext, hooks: AgentHooks) -> None:
    """Every stop of ``pcontext``'s workers waits at most ``hooks.stop_within_s`` before killing them.

    torchrun's own poll stops the other workers the moment one fails, with ``self.close()`` and its
    default 30 s wait: a survivor blocked in C++ (a store wait for the dead peer while joining the
    process group; NCCL) ignores the SIGTERM, and the restart waited the whole 30 s. The instance's
    ``close`` shadows the class's, so that call is bounded too.
    """
    close = pcontext.close

    def bounded_close(death_sig: signal.Signals | None = None, timeout: int = 30) -> None:
        codes = [h.proc.poll() for h in (getattr(pcontext, "subprocess_handlers", None) or {}).values()]
        close(death_sig, min(timeout, hooks.stop_within_s(codes)))

    pcontext.close = bounded_close  # type: ignore[method-assign]


@contextmanager
def module_global(module: ModuleType, name: str, value: object) -> Iterator[None]:
    """``module.name`` is ``value`` while the block runs: where torchrun builds a class by its global
    name and takes no argument for another."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def agent_class(cls: type[LocalElasticAgent]) -> AbstractContextManager[None]:
    """Make torchrun's launch_agent build ``cls``: it takes no agent class and looks
    ``LocalElasticAgent`` up as a global of torch.distributed.launcher.api."""
    return module_global(launcher_api, "LocalElasticAgent", cls)


class PromptTailLog(TailLog):
    """torchrun's TailLog, looking for new lines every TAIL_INTERVAL_S."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read by start(), which hands it to each tailer thread.
        self._interval_sec = min(self._interval_sec, TAIL_INTERVAL_S)


def prompt_log_tails() -> AbstractContextManager[None]:
    """Make torchrun's process contexts tail their workers' logs with PromptTailLog: they build
    ``TailLog`` by its global name in torch.distributed.elastic.multiprocessing.api."""
    return module_global(processes_api, "TailLog", PromptTailLog)


def takes_prefix_flag() -> bool:
    """Whether this torchrun takes ``--log-line-prefix-template`` (2.14 and newer)."""
    return hasattr(get_args_parser().parse_args(["script"]), "log_line_prefix_template")


def torchrun_argv(argv: list[str], environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """torch < 2.14 takes the log line prefix only from TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE.

    Container images often carry an older torch than the launcher's machine; move the flag into the
    variable there (2.14+ reads both, so it keeps the flag).
    """
    if takes_prefix_flag():
        return argv
    # Only torchrun's own flags (``--x=y``, before the entrypoint) are looked at, never the program's.
    head = next((i for i, arg in enumerate(argv) if not arg.startswith("--")), len(argv))
    flags = [arg for arg in argv[:head] if not arg.startswith(_PREFIX_FLAG)]
    for arg in argv[:head]:
        if arg.startswith(_PREFIX_FLAG):
            environ.setdefault("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE", arg[len(_PREFIX_FLAG):])
    return [*flags, *argv[head:]]


def parse_torchrun_args(argv: list[str]) -> argparse.Namespace:
    """torchrun's own parser (public in torch.distributed.run), on argv made fit for this torch."""
    return get_args_parser().parse_args(torchrun_argv(argv))


def worker_stderrs(outputs: list[str]) -> dict[int, Path]:
    """Each worker's stderr log by local rank, from the log files the agent's process context names.

    torchrun writes ``<log dir>/attempt_N/<local rank>/stderr.log``; the failures it raises carry no
    path (their error_file reads ``<N/A>``), so the verdict finds a worker's traceback here.
    """
    found = {}
    for output in outputs:
        path = Path(output)
        if path.name == "stderr.log" and path.parent.name.isdigit():
            found[int(path.parent.name)] = path
    return found
