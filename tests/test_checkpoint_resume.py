"""Exact resume under real torchrun: SIGTERM, SIGKILL of a rank, a kill before commit, and resharding."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from tests.checkpoint_runs import (
    assert_models_equal,
    committed_steps,
    gangrun,
    global_samples,
    read_checkpoint,
    run_in_process,
    run_ok,
    samples_by_step,
    wait_for_step,
    worker_pid,
)
from tests.conftest import child_env
from train.checkpoint import KILL_BEFORE_COMMIT_ENV
from train.contract import EXIT_REQUEUE

pytestmark = [pytest.mark.multiprocess, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

STEPS = 32
# 1,437 digits / 48 = 29 steps per epoch, so runs cross into epoch 1. 48 = 8 x {1, 2, 3} x accumulation.
COMMON = [f"train.max_steps={STEPS}", "train.global_batch_size=48", "train.micro_batch_size=8",
          "train.log_every=8", "train.eval_every=0", "metrics.plot=false", "train.record_samples=true",
          "checkpoint.every=4"]


def step_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "checkpoints" / f"step-{step:08d}"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    return child_env(tmp_path_factory.mktemp("env"))


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run that keeps every checkpoint: the numbers the others must match."""
    out = tmp_path_factory.mktemp("reference")
    run_ok(2, [*COMMON, f"output_dir={out}", "checkpoint.keep=0"], env, out)
    assert committed_steps(out / "checkpoints") == list(range(4, STEPS + 1, 4))
    return out


def assert_same_as_reference(out: Path, reference: Path, scratch: Path) -> None:
    assert_models_equal(read_checkpoint(step_dir(out, STEPS), scratch),
                        read_checkpoint(step_dir(reference, STEPS), scratch))
    for rank in (0, 1):
        assert samples_by_step(out, rank) == samples_by_step(reference, rank), f"rank {rank} saw other samples"


def test_sigterm_saves_exits_requeue_and_resumes_bit_identical(reference, env, tmp_path):
    # Async saves and keep-last-2 ride along: they must not change a single number.
    overrides = [*COMMON, f"output_dir={tmp_path}", "checkpoint.async_save=true", "checkpoint.keep=2"]
    run = gangrun(2, overrides, env, tmp_path)
    wait_for_step(tmp_path / "samples" / "rank1.jsonl", 10, run)
    # One rank is signalled; both must agree, save and exit 75.
    os.kill(worker_pid(run.proc.pid, 1), signal.SIGTERM)
    code, output = run.finish()
    assert code == EXIT_REQUEUE, output[-4000:]
    stopped = committed_steps(tmp_path / "checkpoints")[-1]
    assert 10 <= stopped < STEPS and f"stopping at step {stopped} on a peer rank's signal" in output

    output = run_ok(2, overrides, env, tmp_path)
    assert f"resumed from {step_dir(tmp_path, stopped)} (step {stopped}" in output
    assert committed_steps(tmp_path / "checkpoints") == [STEPS - 4, STEPS]
    assert_same_as_reference(tmp_path, reference, tmp_path / "scratch")
    # The kept step before the last was saved asynchronously, and is whole.
    assert_models_equal(read_checkpoint(step_dir(tmp_path, STEPS - 4), tmp_path / "scratch"),
                        read_checkpoint(step_dir(reference, STEPS - 4), tmp_path / "scratch"))


def test_sigkill_of_one_rank_restarts_and_resumes_bit_identical(reference, env, tmp_path):
    run = gangrun(2, [*COMMON, f"output_dir={tmp_path}"], env, tmp_path, "--max-restarts", "2")
    wait_for_step(tmp_path / "samples" / "rank1.jsonl", 10, run)
    os.kill(worker_pid(run.proc.pid, 1), signal.SIGKILL)
    code, output = run.finish()
    assert code == 0, output[-4000:]
    assert "checkpoint: resumed from" in output
    assert_same_as_reference(tmp_path, reference, tmp_path / "scratch")


def test_kill_before_commit_never_loads_the_uncommitted_checkpoint(reference, env, tmp_path):
    env = {**env, KILL_BEFORE_COMMIT_ENV: "8"}
    output = run_ok(2, [*COMMON, f"output_dir={tmp_path}"], env, tmp_path, "--max-restarts", "2")
    assert f"skipping incomplete {step_dir(tmp_path, 8)}" in output
    assert f"resumed from {step_dir(tmp_path, 4)} (step 4" in output
    assert_same_as_reference(tmp_path, reference, tmp_path / "scratch")
    # Step 8 was logged, then the attempt died and the restart redid steps 5-8: one history, no
    # repeats, and the uninterrupted run's numbers once a whole log window follows the resume.
    resumed, whole = history(tmp_path), history(reference)
    assert [step for step, _ in resumed] == [step for step, _ in whole] == [8, 16, 24, 32]
    assert resumed[1:] == whole[1:]


def test_a_rollback_killed_saving_over_a_later_commit_leaves_it_uncommitted(reference, env, tmp_path):
    """Resumed from step 8 of a folder that holds steps to 32, the run saves over step 12: a kill
    before that save commits must not leave step 12 committed with a mix of two saves' files."""
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    rollback = [*COMMON, f"output_dir={tmp_path}", "checkpoint.keep=0", f"checkpoint.resume={step_dir(tmp_path, 8)}"]
    code, output = gangrun(2, rollback, {**env, KILL_BEFORE_COMMIT_ENV: "12"}, tmp_path).finish()
    assert code != 0, output[-4000:]
    assert committed_steps(tmp_path / "checkpoints") == [s for s in range(4, STEPS + 1, 4) if s != 12]
    assert f"saving over {step_dir(tmp_path, 12)}, committed before" in output
    run_ok(2, rollback, env, tmp_path)
    for step in (12, STEPS):
        assert_models_equal(read_checkpoint(step_dir(tmp_path, step), tmp_path / "scratch"),
                            read_checkpoint(step_dir(reference, step), tmp_path / "scratch"))


def history(output_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training row in metrics.jsonl, in file order."""
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def assert_data_continues(out: Path, world: int, reference: Path, after: int) -> None:
    """Each step's global batch after the resume is the reference's: no sample repeated or skipped."""
    resumed = global_samples(out, world)
    expected = {s: v for s, v in global_samples(reference, 2).items() if s > after}
    assert resumed == expected


def test_reshard_2_to_1(reference, tmp_path):
    source = step_dir(reference, 8)
    run_in_process([*COMMON, f"output_dir={tmp_path}", f"checkpoint.resume={source}", "train.max_steps=8"])
    assert_models_equal(read_checkpoint(step_dir(tmp_path, 8), tmp_path / "s"), read_checkpoint(source, tmp_path / "s"))
    run_in_process([*COMMON, f"output_dir={tmp_path}"])
    assert_data_continues(tmp_path, 1, reference, after=8)
    # Different accumulation order, same mathematics.
    assert_models_equal(read_checkpoint(step_dir(tmp_path, STEPS), tmp_path / "s"),
                        read_checkpoint(step_dir(reference, STEPS), tmp_path / "s"), exact=False)


def test_reshard_2_to_3(reference, env, tmp_path):
    source = step_dir(reference, 8)
    output = run_ok(3, [*COMMON, f"output_dir={tmp_path}", f"checkpoint.resume={source}", "train.max_steps=8"],
                    env, tmp_path)
    assert "saved on 2 ranks, resuming on 3" in output
    assert_models_equal(read_checkpoint(step_dir(tmp_path, 8), tmp_path / "s"), read_checkpoint(source, tmp_path / "s"))
    run_ok(3, [*COMMON, f"output_dir={tmp_path}"], env, tmp_path)
    assert_data_continues(tmp_path, 3, reference, after=8)
    assert_models_equal(read_checkpoint(step_dir(tmp_path, STEPS), tmp_path / "s"),
                        read_checkpoint(step_dir(reference, STEPS), tmp_path / "s"), exact=False)


def test_reshard_1_to_2(env, tmp_path):
    single = tmp_path / "single"
    run_in_process([*COMMON, f"output_dir={single}", "train.max_steps=4"])
    source = step_dir(single, 4)
    run_ok(2, [*COMMON, f"output_dir={tmp_path}", f"checkpoint.resume={source}", "train.max_steps=4"], env, tmp_path)
    assert_models_equal(read_checkpoint(step_dir(tmp_path, 4), tmp_path / "s"), read_checkpoint(source, tmp_path / "s"))


def test_four_ranks_resume_bit_identical(env, tmp_path):
    # On 4 ranks the summation order of a gradient all-reduce depends on DDP's bucket layout, which
    # differs between a resumed run's first step and the uninterrupted run's (see
    # train.parallel.allreduce_per_parameter); on 2 ranks it cannot show.
    four = [*COMMON, "train.micro_batch_size=12", "train.record_samples=false", "checkpoint.keep=0"]
    reference = tmp_path / "reference"
    run_ok(4, [*four, f"output_dir={reference}"], env, tmp_path)
    resumed = tmp_path / "resumed"
    output = run_ok(4, [*four, f"output_dir={resumed}", f"checkpoint.resume={step_dir(reference, 16)}"], env, tmp_path)
    assert "(step 16, epoch 0, saved on 4 ranks)" in output
    assert_models_equal(read_checkpoint(step_dir(resumed, STEPS), tmp_path / "s"),
                        read_checkpoint(step_dir(reference, STEPS), tmp_path / "s"))


def test_a_shard_one_rank_cannot_read_fails_the_resume_on_every_rank_naming_it(env, tmp_path):
    """Each rank loads on its own (train.checkpoint.Checkpointer._read); one that fails must still stop
    the others, which name it, instead of leaving them to train on weights it never loaded."""
    from torch.distributed.checkpoint import FileSystemReader

    fsdp = [*COMMON, "train.parallel=fsdp", f"output_dir={tmp_path}"]
    run_ok(2, [*fsdp, "train.max_steps=4"], env, tmp_path)
    step = step_dir(tmp_path, 4)
    # The largest record in rank 1's file: a shard of rank 1's only, which no other rank reads.
    stored = FileSystemReader(str(step)).read_metadata().storage_data
    shard_index = max((index for index, where in stored.items() if where.relative_path.startswith("__1_")),
                      key=lambda index: stored[index].length)
    shard, shard_fqn = stored[shard_index], shard_index.fqn
    with (step / shard.relative_path).open("r+b") as file:
        file.seek(shard.offset)
        file.write(bytes(64))
    code, output = gangrun(2, [*fsdp, "train.max_steps=8"], env, tmp_path).finish()
    assert code != 0
    assert (f"checkpoint: rank 1 could not load {step}: ValueError: {shard_fqn}: its record in "
            f"{shard.relative_path} at byte {shard.offset}") in output, output[-4000:]
    assert f"checkpoint: rank(s) 1 could not load {step}; their logs say why" in output, output[-4000:]
    verdict = output.strip().splitlines()[-1]
    assert verdict.startswith("gangrun: failed: ") and "could not load" in verdict, verdict


def test_fsdp_async_saves_hold_their_steps_state_as_blocking_saves_do(env, tmp_path):
    """An async save copies FSDP's shards beside the next forward and backward
    (train.staging_room.SharedMemoryStager): each checkpoint must hold its own step's weights and
    optimizer state, bit for bit what a blocking save of the same run writes."""
    fsdp = [*COMMON, "train.parallel=fsdp", "train.max_steps=8", "checkpoint.every=2", "checkpoint.keep=0",
            "train.record_samples=false"]
    blocking, background = tmp_path / "blocking", tmp_path / "background"
    run_ok(2, [*fsdp, f"output_dir={blocking}"], env, tmp_path)
    run_ok(2, [*fsdp, f"output_dir={background}", "checkpoint.async_save=true"], env, tmp_path)
    assert committed_steps(background / "checkpoints") == [2, 4, 6, 8]
    for step in (2, 4, 6):
        saved = read_checkpoint(step_dir(background, step), tmp_path / "s")
        expected = read_checkpoint(step_dir(blocking, step), tmp_path / "s")
        assert tensors_by_name(saved).keys() == tensors_by_name(expected).keys()
        for name, tensor in tensors_by_name(expected).items():
            assert torch.equal(tensors_by_name(saved)[name], tensor), f"step {step}: {name} differs"


def tensors_by_name(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of the model and optimizer in a loaded checkpoint, by its dotted path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {name: tensor for key, value in tree.items() if prefix or key in ("model", "optimizer")
                for name, tensor in tensors_by_name(value, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(tree, (list, tuple)):
        return {name: tensor for index, value in enumerate(tree)
                for name, tensor in tensors_by_name(value, f"{prefix}.{index}").items()}
    return {}
