"""Flags exist only where they mean something, each explains itself, and one validation serves every engine."""

from __future__ import annotations

import pytest

from launcher.cli import command_help, main
from launcher.contract import EXIT_BAD_INPUT
from launcher.engines import ENGINES
from launcher.options import options_of
from launcher.spec import JobSpec


def engine_flags(name: str) -> list[str]:
    return [opt.flag for opt in options_of(ENGINES[name].options, name)]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_help_shows_no_cluster_option_and_every_line_explains_its_flag() -> None:
    text = command_help("run", "local")
    for flag in [*engine_flags("slurm"), *engine_flags("k8s"), "--time", "--gpus-per-node", "--target"]:
        assert f"{flag} " not in text and f"{flag}," not in text, f"`gangrun run --help` lists {flag}"
    for opt in [*options_of(JobSpec), *options_of(ENGINES["local"].options, "local")]:
        if opt.path in ENGINES["local"].reads or opt.path.startswith("local."):
            assert opt.flag in text
            assert "(default: " in opt.help_line() and len(opt.meta.help.split()) >= 4, opt.path


@pytest.mark.parametrize("target", ["slurm", "k8s"])
def test_submit_help_for_a_target_shows_its_options_only(target: str) -> None:
    text = command_help("submit", target)
    other = "k8s" if target == "slurm" else "slurm"
    assert all(flag in text for flag in engine_flags(target))
    assert not any(f"{flag} " in text for flag in engine_flags(other))
    assert "--stop-grace" not in text


def test_every_option_of_every_engine_has_a_help_line_with_its_default() -> None:
    for name, engine in ENGINES.items():
        for opt in [*options_of(JobSpec), *options_of(engine.options, name)]:
            line = opt.help_line()
            # Not the field's name (the old `--nnodes NNODES  nnodes`): a sentence, then the default.
            assert line.endswith(")") and "(default: " in line and len(opt.meta.help.split()) >= 4, opt.path


@pytest.mark.parametrize("argv, flag, owner", [
    (["run", "--partition", "gpu", "x.py"], "--partition", "Slurm"),
    (["run", "--kind", "jobset", "x.py"], "--kind", "Kubernetes"),
    (["run", "--gpus-per-node", "1", "x.py"], "--gpus-per-node", "--target k8s"),
    (["run", "--time", "01:00:00", "x.py"], "--time", "--target slurm"),
    (["render", "--target", "k8s", "--rdzv-endpoint", "h:1", "x.py"], "--rdzv-endpoint", "`gangrun run`"),
    (["render", "--target", "slurm", "--shm-size", "1Gi", "x.py"], "--shm-size", "Kubernetes"),
    (["submit", "--target", "slurm", "--namespace", "ml", "x.py"], "--namespace", "Kubernetes"),
    (["submit", "--target", "k8s", "--stop-grace", "5", "x.py"], "--stop-grace", "`gangrun run`"),
])
def test_a_flag_of_another_target_is_one_line_exit_2(argv: list[str], flag: str, owner: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(argv, capsys)
    assert code == EXIT_BAD_INPUT and not out
    assert err.startswith(f"gangrun: error: {flag}: ") and owner in err and err.count("\n") == 1, err


def test_the_flag_is_parsed_so_the_entry_is_not_swallowed(capsys: pytest.CaptureFixture[str]) -> None:
    # Before, `--partition gpu x.py` under `run` made "gpu" the script and x.py its argument.
    code, _, err = run_cli(["run", "--partition", "gpu", "x.py"], capsys)
    assert code == EXIT_BAD_INPUT and "gpu" not in err.split(":")[2]


def test_submit_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["submit", "-m", "train"], capsys)
    assert code == EXIT_BAD_INPUT and err.startswith("gangrun: error: --target: ") and "--target slurm" in err


@pytest.mark.parametrize("target", ["slurm", "k8s"])
@pytest.mark.parametrize("time, problem", [("00:75:00", "above 59"), ("1:00", "is not HH:MM:SS")])
def test_one_time_limit_rule_for_every_engine(target: str, time: str, problem: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Before, 00:75:00 was refused for Slurm and rendered for Kubernetes as 5,700 seconds.
    code, out, err = run_cli(["render", "--target", target, "--time", time, "-m", "train"], capsys)
    assert code == EXIT_BAD_INPUT and not out
    assert err.startswith("gangrun: error: time: ") and problem in err


def test_bad_engine_values_are_checked_in_the_engines_own_package(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, field in ((["--target", "slurm", "--max-requeues", "-1"], "slurm.max_requeues"),
                        (["--target", "slurm", "--signal-grace", "0"], "slurm.signal_grace_s"),
                        (["--target", "k8s", "--gang-restarts", "-1"], "k8s.gang_restarts"),
                        (["--target", "k8s", "--kind", "deployment"], "k8s.kind")):
        code, _, err = run_cli(["render", *argv, "-m", "train"], capsys)
        assert code == EXIT_BAD_INPUT and err.startswith(f"gangrun: error: {field}: "), err


def test_local_options_come_from_a_profile_too(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "gangrun.toml"
    profile.write_text("[local]\nstop_grace_s = 0\n")
    code, _, err = run_cli(["run", "--dry-run", "--profile-file", str(profile), "x.py"], capsys)
    assert code == EXIT_BAD_INPUT and err.startswith("gangrun: error: local.stop_grace_s: ")
