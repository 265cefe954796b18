"""The shapes launcher/compat.py relies on, checked against the installed torch: an upgrade that moves
one fails here, with the shape named, instead of in a user's job."""

from __future__ import annotations

import inspect
import os
import signal
import sys

import torch.distributed.elastic.multiprocessing.api as processes_api
import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import SimpleElasticAgent
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import PContext, SubprocessContext
from torch.distributed.elastic.multiprocessing.tail_log import TailLog

from launcher import compat


def test_launch_agent_builds_the_agent_class_it_finds_as_a_module_global() -> None:
    assert "LocalElasticAgent" in launcher_api.launch_agent.__code__.co_names, (
        "torch.distributed.launcher.api.launch_agent no longer looks up LocalElasticAgent by its global name: "
        "launcher.compat.agent_class cannot swap in gangrun's agent")
    assert launcher_api.LocalElasticAgent is LocalElasticAgent


def test_the_agent_members_the_hooks_use_still_exist() -> None:
    source = inspect.getsource(SimpleElasticAgent) + inspect.getsource(LocalElasticAgent)
    for member in compat.AGENT_MEMBERS:
        assert hasattr(LocalElasticAgent, member) or f"self.{member} " in source or f"self.{member}:" in source, (
            f"LocalElasticAgent.{member} is gone: launcher.compat.hooked_agent_class needs a new hook")
    for method in ("_monitor_workers", "_shutdown", "_start_workers"):
        assert callable(getattr(LocalElasticAgent, method)), f"LocalElasticAgent.{method} is no longer a method"
    context = inspect.getsource(PContext) + inspect.getsource(SubprocessContext)
    for member in compat.PCONTEXT_MEMBERS:
        assert f"self.{member} =" in context or f"def {member}(" in context, (
            f"torchrun's process context has no {member}: the agent cannot see its workers' pids, logs or codes")
    shutdown = inspect.signature(LocalElasticAgent._shutdown).parameters
    assert list(shutdown)[1:] == ["death_sig", "timeout"], (
        "LocalElasticAgent._shutdown(death_sig, timeout) changed: the hooked agent cannot bound the stop")


def test_torchrun_passes_a_death_signal_only_when_the_agent_was_signalled() -> None:
    source = inspect.getsource(SimpleElasticAgent.run) + inspect.getsource(LocalElasticAgent._stop_workers)
    assert "self._shutdown(e.sigval" in source and "self._shutdown()" in source, (
        "torchrun's agent calls _shutdown differently: launcher.compat tells a stop from a restart by death_sig")


def test_the_swap_is_undone_after_the_run() -> None:
    policy_calls: list[str] = []

    class Policy:
        def stop_within_s(self, exit_codes: list[int | None]) -> int:
            return 1

        def workers_starting(self, attempt: int) -> None:
            policy_calls.append("start")

        def watch(self, group: object, outputs: list[str]) -> None:
            policy_calls.append("watch")

        def stop_restarting(self, result: object) -> bool:
            policy_calls.append("monitor")
            return False

        def drain(self, death_sig: object, pids: list[int]) -> None:
            policy_calls.append("drain")

        def after_shutdown(self, exit_codes: list[int | None]) -> None:
            policy_calls.append("shutdown")

    hooked = compat.hooked_agent_class(Policy())
    assert issubclass(hooked, LocalElasticAgent)
    with compat.agent_class(hooked):
        assert launcher_api.LocalElasticAgent is hooked
    assert launcher_api.LocalElasticAgent is LocalElasticAgent


def test_torchruns_poll_stops_the_workers_with_the_close_the_bound_shadows() -> None:
    assert "self.close()" in inspect.getsource(SubprocessContext._poll), (
        "torchrun's SubprocessContext._poll no longer stops the workers with self.close(): "
        "launcher.compat.bound_stops may not bound the wait after a failure")
    assert list(inspect.signature(PContext.close).parameters)[1:] == ["death_sig", "timeout"], (
        "PContext.close(death_sig, timeout) changed: launcher.compat.bound_stops cannot bound it")


class FakeProc:
    def __init__(self, code: int | None) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code


class FakeHandler:
    def __init__(self, code: int | None) -> None:
        self.proc = FakeProc(code)


class FakeContext:
    """The two members of torchrun's process context that bound_stops touches."""

    def __init__(self, codes: list[int | None]) -> None:
        self.subprocess_handlers = {rank: FakeHandler(code) for rank, code in enumerate(codes)}
        self.closed: list[tuple[signal.Signals | None, int]] = []

    def close(self, death_sig: signal.Signals | None = None, timeout: int = 30) -> None:
        self.closed.append((death_sig, timeout))


def test_every_stop_waits_at_most_what_the_hooks_allow_for_the_codes_so_far() -> None:
    asked: list[list[int | None]] = []

    class Hooks:
        def stop_within_s(self, exit_codes: list[int | None]) -> int:
            asked.append(exit_codes)
            return 2

    context = FakeContext([None, -9])
    compat.bound_stops(context, Hooks())  # type: ignore[arg-type]
    context.close()
    context.close(signal.SIGTERM, 1)
    assert context.closed == [(None, 2), (signal.SIGTERM, 1)]
    assert asked == [[None, -9], [None, -9]]


def test_process_contexts_build_their_log_tailers_by_the_global_name_the_swap_replaces() -> None:
    assert "TailLog" in PContext.__init__.__code__.co_names and processes_api.TailLog is TailLog, (
        "torchrun's PContext no longer builds TailLog by its global name in torch.distributed.elastic."
        "multiprocessing.api: launcher.compat.prompt_log_tails cannot shorten the tailers' sleep")
    assert "self._interval_sec" in inspect.getsource(TailLog.start), (
        "TailLog.start no longer hands self._interval_sec to its tailers: launcher.compat.PromptTailLog sets it")
    with compat.prompt_log_tails():
        assert processes_api.TailLog is compat.PromptTailLog
        tail = processes_api.TailLog("trainer", {}, sys.stdout)
        assert tail._interval_sec == compat.TAIL_INTERVAL_S
    assert processes_api.TailLog is TailLog


def test_the_log_prefix_flag_becomes_the_variable_only_where_torchrun_lacks_it() -> None:
    argv = ["--nnodes=1", "--log-line-prefix-template=[rank${rank}]: ", "-m", "train", "--x=1"]
    environ: dict[str, str] = {}
    out = compat.torchrun_argv(argv, environ)
    if compat.takes_prefix_flag():
        assert out == argv and not environ
    else:
        assert out == ["--nnodes=1", "-m", "train", "--x=1"]
        assert environ == {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]: "}
    assert "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE" not in os.environ or not compat.takes_prefix_flag()


def test_torchruns_parser_reads_the_argv_every_engine_renders() -> None:
    args = compat.parse_torchrun_args(["--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
                                       "--rdzv-endpoint=h:1", "--rdzv-id=7", "--tee=3", "-m", "train", "--config", "x"])
    assert (args.nnodes, args.nproc_per_node, args.module, args.training_script) == ("2", "4", True, "train")
    assert args.training_script_args == ["--config", "x"]
