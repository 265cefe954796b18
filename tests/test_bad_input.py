"""Bad input never starts anything: one line naming the field and the fix, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import gangrun
from train.__main__ import main as train_main


@pytest.mark.parametrize("args, field", [
    (["run", "--nproc-per-node", "0", "x.py"], "nproc_per_node"),
    (["run", "--nnodes", "3:2", "x.py"], "nnodes"),
    (["run", "--env", "NOEQUALS", "x.py"], "env"),
    (["run", "--max-restarts", "lots", "x.py"], "max_restarts"),
    (["run", "missing_script.py"], "entrypoint"),
    (["run", "-m", "no_such_module_xyz"], "entrypoint"),
    (["run", "--profile", "nope", "x.py"], "profile"),
])
def test_launcher_rejects(args, field, gangrun_env, tmp_path):
    result = gangrun(*args, env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gangrun: error: {field}"), result.stderr
    assert not list(tmp_path.glob("runs"))


def test_bad_profile_file_key(gangrun_env, tmp_path):
    (tmp_path / "gangrun.toml").write_text("nproc_per_nod = 2\n")
    result = gangrun("run", "--dry-run", "x.py", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 2
    assert "nproc_per_nod: unknown key" in result.stderr


# torch's @record cannot install its fault handler on pytest's captured stderr; harmless here.
@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
@pytest.mark.parametrize("args, key", [
    (["--config", "no-such-preset"], "--config"),
    (["--config", "digits", "train.max_stepz=3"], "train.max_stepz"),
    (["--config", "digits", "train.max_steps=three"], "train.max_steps"),
    (["--config", "digits", "train.precision=fp8"], "train.precision"),
    (["--config", "digits", "not-an-override"], "not-an-override"),
    (["--config", "digits", "train.global_batch_size=48"], "train.global_batch_size"),
])
def test_train_rejects(args, key, tmp_path, monkeypatch, capsys):
    # In this process (a config error stops before torch.distributed is touched); the real
    # `python -m train` subprocess is the case below.
    monkeypatch.chdir(tmp_path)
    assert train_main([*args, f"output_dir={tmp_path}/out"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train: error: {key}"), err
    assert not (tmp_path / "out").exists()


def test_python_m_train_rejects_a_bad_override_in_one_line(gangrun_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "train", "--config", "digits", "train.max_stepz=3",
                             f"output_dir={tmp_path}/out"],
                            capture_output=True, text=True, env=gangrun_env, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("train: error: train.max_stepz: unknown key") and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_and_runs_nothing(gangrun_env, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("raise SystemExit('must not run')\n")
    result = gangrun("run", "--dry-run", "--nproc-per-node", "2", "--env", "A=1", str(script), "--x", "y",
                     env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0
    command = result.stdout.strip().splitlines()[-1]
    assert command.startswith("PYTHONUNBUFFERED=1 OMP_NUM_THREADS=")
    assert " A=1 " in command
    assert ("-P -m launcher.agent --hang-timeout=auto --stop-grace=30 --verdict-to-launcher --nnodes=1 "
            "--nproc-per-node=2") in command
    assert command.endswith(f"{script} --x y")
