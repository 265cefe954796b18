"""Timeouts in one place: the spec's values reach torchrun and the workers, and start-up names each one's source."""

from __future__ import annotations

from pathlib import Path

from launcher.agent.guard import split_agent_args
from launcher.engines.local.options import LocalOptions
from launcher.profiles import setting_sources
from launcher.spec import Entrypoint, JobSpec, NodeRange
from launcher.timeouts import rdzv_conf, timeouts_line
from launcher.torchrun import Rendezvous, agent_flags, torchrun_args

ENTRY = Entrypoint("train", True)


def test_unset_timeouts_render_nothing_and_keep_torchruns_defaults() -> None:
    spec = JobSpec(ENTRY)
    assert rdzv_conf(spec, "c10d") == {} and rdzv_conf(spec, "static") == {}
    assert not any(a.startswith("--rdzv-conf") for a in torchrun_args(spec, Rendezvous("static", "h", 1)))
    assert agent_flags(spec, 30) == ["--hang-timeout=auto", "--stop-grace=30"]


def test_set_timeouts_become_rdzv_conf_keys_over_the_engines_own_and_the_agents_pg_timeout() -> None:
    spec = JobSpec(ENTRY, nnodes=NodeRange(1, 2), rdzv_join_timeout=120, rdzv_last_call_timeout=5,
                   store_timeout=90, pg_timeout=600)
    args = torchrun_args(spec, Rendezvous("c10d", "h", 1, conf={"last_call_timeout": "1"}))
    assert "--rdzv-conf=join_timeout=120,last_call_timeout=5,read_timeout=90" in args
    static = torchrun_args(JobSpec(ENTRY, rdzv_join_timeout=120), Rendezvous("static", "h", 1))
    assert "--rdzv-conf=timeout=120" in static
    settings, rest = split_agent_args([*agent_flags(spec, 30), "--nnodes=2"])
    assert settings.pg_timeout_s == 600 and rest == ["--nnodes=2"]


def test_start_up_names_every_timeout_with_its_source(tmp_path: Path) -> None:
    profile = tmp_path / "gangrun.toml"
    profile.write_text("[profile.big]\npg_timeout = 900\n[profile.big.local]\nstop_grace_s = 20\n")
    sources = setting_sources({"rdzv_join_timeout": "120"}, profile="big", profile_file=profile,
                              environ={"GANGRUN_STORE_TIMEOUT": "90"})
    spec = JobSpec(ENTRY, rdzv_join_timeout=120, store_timeout=90, pg_timeout=900)
    assert timeouts_line(spec, "local", LocalOptions(stop_grace_s=20), sources) == (
        "gangrun: timeouts: rendezvous join 120 s (flag), rendezvous last call 30 s (default), store 90 s "
        f"($GANGRUN_STORE_TIMEOUT), process group 900 s ({profile} [profile.big]), hang auto (default), "
        f"stop grace 20 s ({profile} [profile.big])")
