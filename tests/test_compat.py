"""The shapes launcher/compat.py relies on, checked against the installed torch: an upgrade that moves
one fails here, with the shape named, instead of in a user's job."""

from __future__ import annotations

import inspect
import os

import torch.distributed.launcher.api as launcher_api
from torch.distributed.elastic.agent.server.api import SimpleElasticAgent
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import PContext, SubprocessContext

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
    for method in ("_monitor_workers", "_shutdown"):
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
        failure_grace_s = 1

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
