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
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.run import get_args_parser

# The private members of LocalElasticAgent the hooks below use (checked by tests/test_compat.py).
AGENT_MEMBERS = ("_monitor_workers", "_shutdown", "_remaining_restarts", "_pcontext")
# The public attributes of torchrun's process context those hooks read (also checked there).
PCONTEXT_MEMBERS = ("pids", "stdouts", "stderrs", "subprocess_handlers")
_PREFIX_FLAG = "--log-line-prefix-template="


class AgentHooks(Protocol):
    """What the node agent adds to torchrun's own elastic agent."""

    # Seconds the surviving workers get to exit when torchrun stops them after a failure or a hang.
    failure_grace_s: int

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
            # stopping workers after a failure, a hang or the end, with nothing left to save.
            if death_sig is None:
                super()._shutdown(signal.SIGTERM, min(timeout, hooks.failure_grace_s))
            else:
                hooks.drain(death_sig, list(self._pcontext.pids().values()) if self._pcontext else [])
                super()._shutdown(death_sig, 1)
            handlers = getattr(self._pcontext, "subprocess_handlers", None) or {}
            hooks.after_shutdown([h.proc.returncode for h in handlers.values()])

    return HookedAgent


@contextmanager
def agent_class(cls: type[LocalElasticAgent]) -> Iterator[None]:
    """Make torchrun's launch_agent build ``cls``: it takes no agent class and looks
    ``LocalElasticAgent`` up as a global of torch.distributed.launcher.api."""
    original = launcher_api.LocalElasticAgent
    launcher_api.LocalElasticAgent = cls  # type: ignore[misc]
    try:
        yield
    finally:
        launcher_api.LocalElasticAgent = original  # type: ignore[misc]


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
