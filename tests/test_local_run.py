"""`gangrun run` end to end: real torchrun agents, gloo ranks on CPU, numbers checked."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, REPO, gangrun

pytestmark = pytest.mark.multiprocess
SCRIPTS = REPO / "tests" / "scripts"


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def losses(output_dir: Path) -> list[float]:
    return [row["loss"] for row in metrics(output_dir) if "loss" in row]


DIGITS = ["--config", "digits", "train.max_steps=30", "train.log_every=5", "train.eval_every=0",
          "metrics.plot=false"]


def test_ddp_matches_single_process_and_ranks_agree(gangrun_env, tmp_path):
    ddp = gangrun("run", "--nproc-per-node", "2", str(SCRIPTS / "train_and_dump.py"), str(tmp_path / "ddp"), *DIGITS,
                  f"output_dir={tmp_path}/ddp-out", env=gangrun_env, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    assert "training: world 2, ddp" in ddp.stdout and "1 micro-steps" in ddp.stdout
    single = subprocess.run([sys.executable, str(SCRIPTS / "train_and_dump.py"), str(tmp_path / "single"), *DIGITS,
                             f"output_dir={tmp_path}/single-out"], capture_output=True, text=True,
                            env=gangrun_env, cwd=tmp_path, timeout=300)
    assert single.returncode == 0, single.stderr
    assert "world 1, none" in single.stdout and "2 micro-steps" in single.stdout

    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    reference = torch.load(tmp_path / "single" / "rank0.pt")
    for key in reference:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs across ranks"
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    ddp_losses = losses(tmp_path / "ddp-out")
    assert ddp_losses[-1] < 0.5 * ddp_losses[0]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(losses(tmp_path / "single-out")),
                               rtol=1e-3, atol=1e-4)


def test_two_local_nodes_train_as_world_of_two(gangrun_env, tmp_path):
    out = tmp_path / "out"
    result = gangrun("run", "--nnodes", "2", "--nproc-per-node", "1", "-m", "train", "--config", "digits",
                     "train.max_steps=10", "train.log_every=5", f"output_dir={out}", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "training: world 2" in result.stdout
    assert "world: 2 ranks on 2 nodes: node 0 on" in result.stdout
    assert (out / "config.toml").is_file() and (out / "curves.png").is_file()
    # The console names the file and shows only what differs from the preset, one key per line.
    assert f"config: {out / 'config.toml'}; preset digits, with 3 changes:" in result.stdout
    assert "[rank0]:   train.max_steps = 10" in result.stdout and "[model]" not in result.stdout
    assert "eval_accuracy" in metrics(out)[-1]


def test_elastic_range_starts_without_waiting(gangrun_env, tmp_path):
    result = gangrun("run", "--nnodes", "1:2", str(SCRIPTS / "report_world.py"), env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[rank0]: rank 0 world 2 sum 2" in result.stdout and "[rank1]: rank 1 world 2 sum 2" in result.stdout


@pytest.mark.parametrize("fail_code, expected", [(None, 1), ("7", 7)])
def test_failing_rank_is_named_with_its_exit_code(gangrun_env, tmp_path, fail_code, expected):
    env = dict(gangrun_env)
    if fail_code:
        env["FAIL_CODE"] = fail_code
    result = gangrun("run", "--nproc-per-node", "2", str(SCRIPTS / "fail_rank1.py"), env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == expected, result.stderr
    klass = "exception in user code" if fail_code is None else "nonzero exit"
    verdict = rf"^gangrun: failed: {klass}: rank 1 on \S+ exited {expected}\b"
    assert re.search(verdict, result.stderr, re.M), result.stderr
    if fail_code is None:
        assert "[rank1]: ValueError: rank 1 is broken" in result.stderr


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_learns(gangrun_env, tmp_path, precision):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "train", *DIGITS, f"train.precision={precision}",
                             f"output_dir={out}"], capture_output=True, text=True, env=gangrun_env, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"{precision}, device cpu" in result.stdout
    series = losses(out)
    assert series[-1] < 0.5 * series[0], series


def test_sigterm_reaches_the_workers_and_a_script_without_a_handler_is_requeued(gangrun_env, tmp_path):
    env = {**gangrun_env, "SLEEP": "120"}
    proc = subprocess.Popen([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", str(SCRIPTS / "report_world.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    ready = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        ready += line.strip().endswith("ready")
        if ready == 2:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    # The script dies of the signal; the agent that got it asks for a requeue, as the engines need.
    assert proc.returncode == 75, rest
    assert "workers stopped before saving; the newest commit stands, exiting 75" in rest
    workers = subprocess.run(["pgrep", "-f", str(SCRIPTS / "report_world.py")], capture_output=True, text=True)
    assert workers.stdout == "", "workers outlived the launcher"


def test_sigterm_to_training_saves_and_exits_75_then_resumes(gangrun_env, tmp_path):
    out = tmp_path / "out"
    argv = [str(BIN / "gangrun"), "run", "--nproc-per-node", "2", "-m", "train", "--config", "digits",
            "train.max_steps=400", "train.log_every=5", "train.eval_every=0", "metrics.plot=false",
            f"output_dir={out}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=gangrun_env,
                            cwd=tmp_path)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "step     10 " in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 75, rest
    assert "checkpoint: committed" in rest
    resumed = subprocess.run([*argv[:-2], "train.max_steps=40", f"output_dir={out}"], capture_output=True,
                             text=True, env=gangrun_env, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "checkpoint: resumed from" in resumed.stdout
