"""Fail loudly, with real torchrun ranks: a hung rank is named with every rank's stack, a slow rank is
named as the straggler, a stop at any moment is honoured, and a running local job shows its ranks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.checkpoint_runs import committed_steps, gangrun, worker_pid
from tests.conftest import BIN, REPO
from train.testhooks import LINGER_ENV, SLOW_ENV, STALL_ENV, UNEVEN_EVAL_ENV

pytestmark = pytest.mark.multiprocess
STALL_SCRIPT = str(REPO / "tests" / "scripts" / "stall_rank1.py")


def leftovers(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a run's own output folder): none may outlive a run."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def hang_line(output: str) -> str:
    lines = [line for line in output.splitlines() if (line.startswith("gangrun: hang: rank") and "via" not in line)
             or line.startswith("gangrun: hang: no progress")]
    assert lines, output
    return lines[-1]


def evidence(output_dir: Path) -> Path:
    [folder] = output_dir.glob("hang-*")
    return folder


def test_a_rank_stalled_outside_collectives_is_named_with_every_ranks_stack(tmp_path: Path,
                                                                            gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    env = {**gangrun_env, STALL_ENV: "1:5"}
    started = time.monotonic()
    code, output = gangrun(2, ["train.max_steps=200", f"output_dir={out}"], env, tmp_path,
                           "--hang-timeout", "3").finish(timeout=180)
    line = hang_line(output)
    print(f"\nstalled rank caught in {time.monotonic() - started:.1f} s (run start to exit): {line}")
    assert code == 124, output
    assert re.search(r"rank 1 \(\S+\) stuck \d+ s in stall_here\(\) at testhooks.py:\d+ after step \d \(train\)",
                     line), line
    # Rank 0 runs on into the next collective: DDP's all-reduce inside backward, or the stop flag's
    # all-reduce where the step falls on one of its checks (their spacing follows the step time).
    waits = re.search(r"rank 0 waits in (_engine_run_backward|all_reduce)\(\)", line)
    assert waits, line
    assert f"stacks in {out}/hang-" in line
    folder = evidence(out)
    assert "stall_here" in (folder / "rank1.txt").read_text()
    # Rank 0's own stack on disk shows the collective the line names.
    assert waits.group(1) in (folder / "rank0.txt").read_text()
    assert "gangrun: exiting 124 (hang); hang: rank 1 (" in output
    # The run's last line is the job's verdict, the watchdog's line in it (launcher.verdict).
    verdict = f"gangrun: failed: hang: {line.removeprefix('gangrun: hang: ')}; exit 124"
    assert output.splitlines()[-1].startswith(verdict)
    assert leftovers(str(out)) == []


def test_a_sigstopped_rank_is_caught_and_nothing_is_left_running(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    run = gangrun(2, ["train.max_steps=100000", f"output_dir={out}"], gangrun_env, tmp_path, "--hang-timeout", "3")
    try:
        victim = worker_pid(run.proc.pid, 1)
        deadline = time.monotonic() + 120
        while '"step": 20,' not in (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else True:
            assert time.monotonic() < deadline and run.proc.poll() is None, run.output()
            time.sleep(0.2)
        os.kill(victim, signal.SIGSTOP)
        stopped = time.monotonic()
        code, output = run.finish(timeout=60)
    finally:
        if run.proc.poll() is None:
            run.stop()
    print(f"\nSIGSTOP to exit: {time.monotonic() - stopped:.1f} s with --hang-timeout 3")
    assert code == 124, output
    assert "rank 1 (" in hang_line(output) and "stopped by a signal (state T)" in hang_line(output)
    # py-spy's dump, or where it could not read the stopped rank, the program's own faulthandler.
    dump = (evidence(out) / "rank1.txt").read_text()
    assert re.search(r"state T via (py-spy|faulthandler)", dump), dump
    # Stopped somewhere in the training loop: inside train_step, or between steps (the stop flag's
    # all-reduce, the metrics), where a 6 ms step now spends half its time.
    assert re.search(r"fit \(train/loop\.py:\d+\)|train/loop\.py\", line \d+ in fit", dump), dump
    assert leftovers(str(out)) == []


def test_the_uneven_fsdp_eval_hang_is_caught_in_eval(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    env = {**gangrun_env, UNEVEN_EVAL_ENV: "1"}
    code, output = gangrun(2, ["train.max_steps=20", "train.eval_every=10", "train.parallel=fsdp", f"output_dir={out}"],
                           env, tmp_path, "--hang-timeout", "2", config="gpt-tiny").finish(timeout=180)
    assert code == 124, output
    line = hang_line(output)
    assert "after step 10 (eval)" in line, line
    assert re.search(r"mismatched collectives: rank 0 in all_reduce\(\) from all_reduce_sum\(\) at distributed.py:"
                     r"\d+ \(evaluate\(\) at loop.py:\d+\), rank 1 in all_gather\w*\(\) from ", line), line
    assert leftovers(str(out)) == []


def test_a_program_that_reports_nothing_is_caught_by_its_silence(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    result = subprocess.run([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", "--hang-timeout", "4", STALL_SCRIPT],
                            capture_output=True, text=True, env=gangrun_env, cwd=tmp_path, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 124, output
    line = hang_line(output)
    assert re.search(r"rank 1 \(\S+\) stuck \d+ s in stall_here\(\) at stall_rank1.py:\d+", line), line
    assert "rank 0 waits in all_reduce()" in line, line
    assert leftovers(STALL_SCRIPT) == []


def test_a_hang_under_max_restarts_restarts_from_the_last_commit(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    env = {**gangrun_env, STALL_ENV: "0:25"}
    code, output = gangrun(2, ["train.max_steps=40", "checkpoint.every=10", f"output_dir={out}"], env, tmp_path,
                           "--hang-timeout", "3", "--max-restarts", "1").finish(timeout=240)
    assert code == 0, output
    assert "stuck" in hang_line(output) and "resumed from" in output and "(step 20," in output
    assert committed_steps(out / "checkpoints")[-1] == 40


def test_a_slowed_rank_is_named_as_the_straggler(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    env = {**gangrun_env, SLOW_ENV: "1:4"}
    code, output = gangrun(2, ["train.max_steps=40", f"output_dir={out}"], env, tmp_path).finish(timeout=180)
    assert code == 0, output
    window = [line for line in output.splitlines() if "straggler: rank 1 computes" in line and "in steps" in line]
    assert window, output
    ratio = float(re.search(r"computes ([\d.]+)x", window[-1]).group(1))  # type: ignore[union-attr]
    print(f"\nstraggler slowed 4x in compute, measured {ratio:.1f}x: {window[-1]}")
    assert 3.0 < ratio < 5.0
    assert "straggler: rank 1 computes" in output.split("ranks:  rank")[1]
    table = [line for line in output.splitlines() if re.match(r"\[rank0\]: +[01] ", line)]
    assert len(table) == 2, output


def test_a_stop_during_startup_exits_75_and_saves_nothing(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    run = gangrun(2, ["train.max_steps=20", f"output_dir={out}"], gangrun_env, tmp_path)
    worker_pid(run.proc.pid, 1)
    # The workers are importing torch: far from the training loop.
    run.proc.send_signal(signal.SIGTERM)
    code, output = run.finish(timeout=120)
    assert code == 75, output
    assert "stopped by SIGTERM" in output
    assert committed_steps(out / "checkpoints") == [] if (out / "checkpoints").exists() else True
    assert gangrun(2, ["train.max_steps=20", f"output_dir={out}"], gangrun_env, tmp_path).finish()[0] == 0


def test_a_stop_after_the_final_checkpoint_exits_0(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    run = gangrun(2, ["train.max_steps=10", f"output_dir={out}"], {**gangrun_env, LINGER_ENV: "5"}, tmp_path)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints").is_dir() or committed_steps(out / "checkpoints") != [10]:
        assert time.monotonic() < deadline and run.proc.poll() is None, run.output()
        time.sleep(0.1)
    run.proc.send_signal(signal.SIGTERM)
    code, output = run.finish(timeout=60)
    assert code == 0, output
    assert "the workers had already finished, exiting 0" in output


def test_a_running_local_job_shows_its_ranks_stacks_and_logs(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    run = gangrun(2, ["train.max_steps=100000", f"output_dir={out}"], gangrun_env, tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "gangrun"), *args], capture_output=True, text=True, env=gangrun_env,
                              cwd=tmp_path, timeout=60)
    try:
        deadline = time.monotonic() + 120
        while "step     10" not in run.output():
            assert time.monotonic() < deadline and run.proc.poll() is None, run.output()
            time.sleep(0.2)
        job = re.search(r"gangrun: run (local-\S+)", run.output()).group(1)  # type: ignore[union-attr]
        assert job in cli("list").stdout
        # The agent publishes its ranks about once a second.
        deadline = time.monotonic() + 30
        while not re.search(r"^ +1  \S+ +\d+  train ", status := cli("status", job).stdout, re.M):
            assert time.monotonic() < deadline, status
            time.sleep(0.5)
        assert status.startswith(f"{job}: RUNNING"), status
        stacks = cli("stacks", job)
        assert stacks.returncode == 0, stacks.stderr
        assert stacks.stdout.count('"MainThread"') == 2 and "# rank 1 (" in stacks.stdout
        assert any(line.startswith("[rank0]: step     10") for line in cli("logs", job).stdout.splitlines())
        assert cli("cancel", job).returncode == 0
        code, output = run.finish(timeout=120)
    finally:
        if run.proc.poll() is None:
            run.stop()
    assert code == 75, output
    ended, verdict = cli("status", job).stdout.strip().splitlines()
    assert ended == f"{job}: ENDED, exit 75" and verdict.startswith("gangrun: stopped: preemption: "), verdict
    assert json.loads((tmp_path / "gangrun-home" / "jobs" / f"{job}.json").read_text())["target"] == "local"


def test_on_two_nodes_every_node_takes_its_stacks_and_prints_the_same_verdict(tmp_path: Path,
                                                                              gangrun_env: dict[str, str]) -> None:
    out = tmp_path / "run"
    env = {**gangrun_env, STALL_ENV: "1:5"}
    code, output = gangrun(1, ["train.max_steps=200", f"output_dir={out}"], env, tmp_path, "--nnodes", "2",
                           "--hang-timeout", "3").finish(timeout=180)
    assert code == 124, output
    verdicts = {line for line in output.splitlines()
                if line.startswith("gangrun: hang: rank") and " via " not in line}
    # One node saw its rank stall; the other, whose rank only waited, was told through the store.
    assert len(verdicts) == 1, output
    assert "rank 1 (" in verdicts.pop().split(";")[0]
    assert sorted(p.name for p in evidence(out).glob("rank*.txt")) == ["rank0.txt", "rank1.txt"]
    assert leftovers(str(out)) == []


def test_a_slow_rank_of_a_program_that_reports_nothing_is_named_from_sampled_stacks(
        tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    result = subprocess.run([str(BIN / "gangrun"), "run", "--nproc-per-node", "2",
                             str(REPO / "tests" / "scripts" / "slow_rank1.py"), "300"],
                            capture_output=True, text=True, env=gangrun_env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gangrun: straggler (sampled stacks)")]
    assert lines and all(line.startswith("gangrun: straggler (sampled stacks): rank 1 ") for line in lines), \
        result.stderr
    print(f"\n{lines[-1]}")
