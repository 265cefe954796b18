"""The chaos suite: real faults at random moments on real torchrun ranks, each test printing its figure.

CI runs reduced counts; ``make chaos`` (GANGRUN_CHAOS=full) runs the full ones. Every trial must
end as the issue promises: bit-identical to an uninterrupted run after SIGKILLs, kills before a
commit and stop signals; a hang caught with every rank's stack and no process left; a full disk
reported in one line with the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from tests.checkpoint_runs import (
    Run,
    assert_models_equal,
    committed_steps,
    gangrun,
    read_checkpoint,
    run_ok,
    samples_by_step,
)
from tests.conftest import child_env
from tests.test_agent_signals import descendants
from tests.test_hang import evidence, hang_line, leftovers
from train.checkpoint import KILL_BEFORE_COMMIT_ENV
from train.testhooks import STALL_ENV, UNEVEN_EVAL_ENV

pytestmark = [pytest.mark.multiprocess, pytest.mark.chaos,
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

FULL = os.environ.get("GANGRUN_CHAOS") == "full"
# (CI, make chaos) trial counts.
KILLS = 20 if FULL else 2
COMMIT_KILLS = 10 if FULL else 1
STOPS = 20 if FULL else 3
HANGS = 10 if FULL else 3

STEPS = 32
COMMON = [f"train.max_steps={STEPS}", "train.global_batch_size=48", "train.micro_batch_size=8",
          "train.log_every=8", "train.eval_every=16", "metrics.plot=false", "train.record_samples=true",
          "checkpoint.every=4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return child_env(tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="module")
def reference(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """An uninterrupted run, and how long it took start to end (the span random moments are drawn from)."""
    out = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    run_ok(2, [*COMMON, f"output_dir={out}"], env, out)
    return out, time.monotonic() - started


def assert_same_as(out: Path, reference: Path, scratch: Path) -> None:
    step = f"step-{STEPS:08d}"
    assert_models_equal(read_checkpoint(out / "checkpoints" / step, scratch),
                        read_checkpoint(reference / "checkpoints" / step, scratch))
    for rank in (0, 1):
        assert samples_by_step(out, rank) == samples_by_step(reference, rank), f"rank {rank} saw other samples"


def workers_of(root: int, attempt: int) -> list[int]:
    """The worker processes of one attempt below ``root`` (by TORCHELASTIC_RESTART_COUNT)."""
    found = []
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            restart = f"TORCHELASTIC_RESTART_COUNT={attempt}".encode()
            if b"TORCHELASTIC_RUN_ID" in b"".join(environ) and restart in environ:
                found.append(pid)
    return found


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_random_sigkills_under_max_restarts_end_bit_identical(reference: tuple[Path, float], env: dict[str, str],
                                                              tmp_path: Path) -> None:
    ref, span = reference
    rng = random.Random(1)
    recoveries = []
    for trial in range(KILLS):
        out = tmp_path / f"t{trial}"
        run = gangrun(2, [*COMMON, f"output_dir={out}"], env, tmp_path, "--max-restarts", "1")
        moment = rng.uniform(1.0, 0.8 * span)
        deadline = time.monotonic() + moment
        victims: list[int] = []
        while time.monotonic() < deadline or not victims:
            victims = workers_of(run.proc.pid, 0)
            if run.proc.poll() is not None:
                break
            time.sleep(0.02)
        samples = out / "samples" / "rank0.jsonl"
        if victims and run.proc.poll() is None:
            before = lines(samples)
            os.kill(rng.choice(victims), signal.SIGKILL)
            killed = time.monotonic()
            while lines(samples) <= before and run.proc.poll() is None:
                time.sleep(0.02)
            if lines(samples) > before:
                recoveries.append(time.monotonic() - killed)
        code, output = run.finish()
        assert code == 0, output[-4000:]
        assert_same_as(out, ref, tmp_path / "scratch")
    median = statistics.median(recoveries) if recoveries else float("nan")
    print(f"\nchaos: {KILLS}/{KILLS} SIGKILLs at random moments ended bit-identical; kill -> first step after "
          f"resuming: median {median:.1f} s over {len(recoveries)} kills that landed in training")


def test_kills_between_shard_writes_and_commit_resume_from_the_previous_commit(
        reference: tuple[Path, float], env: dict[str, str], tmp_path: Path) -> None:
    ref, _ = reference
    steps = [4 * (1 + i % (STEPS // 4 - 1)) for i in range(COMMIT_KILLS)]
    for trial, step in enumerate(steps):
        out = tmp_path / f"t{trial}"
        output = run_ok(2, [*COMMON, f"output_dir={out}"], {**env, KILL_BEFORE_COMMIT_ENV: str(step)}, tmp_path,
                        "--max-restarts", "1")
        assert f"skipping incomplete {out / 'checkpoints' / f'step-{step:08d}'}" in output
        previous = f"resumed from {out / 'checkpoints' / f'step-{step - 4:08d}'}" if step > 4 else "training:"
        assert previous in output, output[-3000:]
        assert_same_as(out, ref, tmp_path / "scratch")
    print(f"\nchaos: {len(steps)}/{len(steps)} kills between the shard writes and the commit (steps {steps}) "
          "resumed from the previous commit, bit-identical")


def signal_every_process(root: int, signum: int) -> None:
    """As Slurm and Kubernetes do: the signal to every process of the job, the launcher included."""
    for pid in [root, *descendants(root)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def phase_now(run_log: Path) -> str:
    """The phase rank 0's agent last published for this run (about a second old), or where it stands."""
    match = re.search(r"folder (\S+)", run_log.read_text()) if run_log.is_file() else None
    node = Path(match.group(1)) / "status" / "node0.json" if match else None
    try:
        ranks = json.loads(node.read_text())["ranks"] if node else []
    except (OSError, ValueError):
        ranks = []
    return str(ranks[0]["phase"]) if ranks else "startup"


def stop_at_random(run: Run, rng: random.Random, latest: float) -> str | None:
    """A stop signal to every process at a random moment before ``latest`` seconds; the phase it hit,
    or None when the run had ended first."""
    time.sleep(rng.uniform(0.3, latest))
    if run.proc.poll() is not None:
        return None
    phase = phase_now(run.log)
    signal_every_process(run.proc.pid, rng.choice([signal.SIGTERM, signal.SIGUSR2]))
    return phase


def test_stop_signals_at_random_moments_exit_75_and_the_rerun_is_bit_identical(
        reference: tuple[Path, float], env: dict[str, str], tmp_path: Path) -> None:
    ref, span = reference
    rng = random.Random(2)
    outcomes: dict[int, int] = {}
    phases: dict[str, int] = {}
    delivered = trial = 0
    while delivered < STOPS:
        assert trial < 3 * STOPS, f"only {delivered} of {trial} runs were still running at their random moment"
        out, trial = tmp_path / f"t{trial}", trial + 1
        run = gangrun(2, [*COMMON, f"output_dir={out}"], env, tmp_path)
        phase = stop_at_random(run, rng, 0.8 * span)
        code, output = run.finish()
        if phase is None:
            assert code == 0, output[-4000:]
            continue
        delivered += 1
        phases[phase] = phases.get(phase, 0) + 1
        assert code in (0, 75), output[-4000:]
        outcomes[code] = outcomes.get(code, 0) + 1
        while code == 75:
            # The rerun resumes; half the time it is stopped again early, while it starts or resumes.
            rerun = gangrun(2, [*COMMON, f"output_dir={out}"], env, tmp_path)
            if rng.random() < 0.5 and (early := stop_at_random(rerun, rng, 4.0)) is not None:
                phases[f"{early} (rerun)"] = phases.get(f"{early} (rerun)", 0) + 1
            code, output = rerun.finish()
            assert code in (0, 75), output[-4000:]
        assert_same_as(out, ref, tmp_path / "scratch")
    hit = ", ".join(f"{phase} x {count}" for phase, count in sorted(phases.items()))
    print(f"\nchaos: {STOPS}/{STOPS} stop signals to every process at random moments: exit 75 x "
          f"{outcomes.get(75, 0)}, exit 0 (after the final checkpoint) x {outcomes.get(0, 0)}; every run "
          f"ended bit-identical after its reruns; phases hit: {hit}")


def test_hangs_are_caught_with_every_ranks_stack_and_nothing_left(env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(3)
    kinds = ["sigstop", "stall", "uneven-eval"]
    latencies = []
    for trial in range(HANGS):
        kind = kinds[trial % len(kinds)]
        out = tmp_path / f"t{trial}"
        rank = rng.choice([0, 1])
        overrides = ["train.max_steps=100000", "train.eval_every=10", f"output_dir={out}"]
        trial_env = dict(env)
        if kind == "stall":
            trial_env[STALL_ENV] = f"{rank}:{rng.randint(3, 30)}"
        elif kind == "uneven-eval":
            trial_env[UNEVEN_EVAL_ENV] = "1"
            overrides.append("train.parallel=fsdp")
        run = gangrun(2, overrides, trial_env, tmp_path, "--hang-timeout", "2",
                      config="gpt-tiny" if kind == "uneven-eval" else "digits")
        if kind == "sigstop":
            while not (out / "metrics.jsonl").is_file() and run.proc.poll() is None:
                time.sleep(0.1)
            time.sleep(rng.uniform(0, 2))
            [victim] = [p for p in workers_of(run.proc.pid, 0)
                        if f"RANK={rank}".encode() in Path(f"/proc/{p}/environ").read_bytes().split(b"\0")]
            os.kill(victim, signal.SIGSTOP)
        code, output = run.finish(timeout=180)
        assert code == 124, output[-4000:]
        line = hang_line(output)
        if kind == "uneven-eval":
            assert "(eval)" in line, line
        else:
            assert f"rank {rank} (" in line.split(";")[0], line
        folder = evidence(out)
        assert sorted(p.name for p in folder.glob("rank*.txt")) == ["rank0.txt", "rank1.txt"]
        assert leftovers(str(out)) == []
        silent = re.search(r"(?:stuck|stopped by a signal \(state T\)|no progress for) (\d+) s", line)
        assert silent is not None, line
        latencies.append(float(silent.group(1)))
    print(f"\nchaos: {HANGS}/{HANGS} hangs ({', '.join(kinds)}) caught with both stacks on disk and nothing left "
          f"running; silent for {min(latencies):.0f}-{max(latencies):.0f} s when called (train allowance 2 s, "
          "eval 10 s)")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_during_a_save_is_one_line_and_the_previous_checkpoint_is_intact(
        env: dict[str, str], tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    # One digits checkpoint is 1.9 MB: the first fits, the second does not.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], check=True)
    try:
        out = tmp_path / "run"
        code, output = gangrun(2, [*COMMON, f"output_dir={out}", f"checkpoint.dir={disk}", "checkpoint.every=10"],
                               env, tmp_path).finish()
        # The program's own line; gangrun's verdict, the last line, quotes it.
        errors = [line for line in output.splitlines() if "train: error:" in line and not line.startswith("gangrun:")]
        print(f"\nchaos: disk full during a save: exit {code}; {errors[0] if errors else output[-500:]}")
        assert code == 1, output[-4000:]
        assert len(errors) == 1 and "no space left on the device" in errors[0], output[-4000:]
        verdict = output.strip().splitlines()[-1]
        assert verdict.startswith("gangrun: failed: ") and "no space left on the device" in verdict, verdict
        assert "the newest commit (step 10) is intact" in errors[0]
        assert committed_steps(disk) == [10]
        assert read_checkpoint(disk / "step-00000010", tmp_path / "scratch")["train"]["step"] == 10
        assert "Traceback" not in output
    finally:
        subprocess.run(["umount", str(disk)], check=False)
