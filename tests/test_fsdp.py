"""FSDP2 on gloo ranks: same numbers as one process, and its checkpoint loads into DDP and one process."""

from __future__ import annotations

import json

import pytest
import torch

from tests.checkpoint_runs import assert_models_equal, gangrun, read_checkpoint, run_in_process, run_ok
from train.checkpoint import Checkpointer
from train.config import load_config
from train.distributed import init_world
from train.loop import build_run, evaluate

pytestmark = [pytest.mark.multiprocess, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

STEPS = 6
TINY_GPT = ["model.d_model=32", "model.seq_len=16", "data.fake_train_size=512", "train.global_batch_size=16",
            "train.micro_batch_size=4", f"train.max_steps={STEPS}", "train.log_every=3", "train.eval_every=0",
            "metrics.plot=false", "checkpoint.every=3", "optim.warmup_steps=2",
            # SGD, unclipped: an update proportional to the gradient shows a reduction that sums
            # instead of averaging; Adam's scale invariance would hide it.
            "optim.name=sgd", "optim.lr=0.1", "optim.grad_clip=0"]


def optimizer_states(checkpoint: dict) -> dict[str, torch.Tensor]:
    return {f"{fqn}.{name}": value for fqn, state in checkpoint["optimizer"]["state"].items()
            for name, value in state.items()}


def test_fsdp_matches_one_process_and_loads_into_ddp_and_one_process(gangrun_env, tmp_path):
    fsdp, single, ddp, one = (tmp_path / name for name in ("fsdp", "single", "ddp", "one"))
    output = run_ok(2, [*TINY_GPT, "train.parallel=fsdp", f"output_dir={fsdp}"], gangrun_env, tmp_path,
                    config="gpt-tiny")
    assert "training: world 2, fsdp, fp32" in output
    run_in_process([*TINY_GPT, f"output_dir={single}"], config="gpt-tiny")
    saved = fsdp / "checkpoints" / f"step-{STEPS:08d}"
    sharded = read_checkpoint(saved, tmp_path / "s")
    # gloo's reduce-scatter has summed instead of averaged in some torch versions (pytorch#162338):
    # only a reference run catches that.
    assert_models_equal(sharded, read_checkpoint(single / "checkpoints" / saved.name, tmp_path / "s"), exact=False)

    run_ok(2, [*TINY_GPT, "train.parallel=ddp", f"output_dir={ddp}", f"checkpoint.resume={saved}"], gangrun_env,
           tmp_path, config="gpt-tiny")
    run_in_process([*TINY_GPT, f"output_dir={one}", f"checkpoint.resume={saved}"], config="gpt-tiny")
    for resaved in (ddp, one):
        loaded = read_checkpoint(resaved / "checkpoints" / saved.name, tmp_path / "s")
        assert_models_equal(loaded, sharded)
        expected = optimizer_states(sharded)
        for key, value in optimizer_states(loaded).items():
            assert torch.equal(value, expected[key]), f"optimizer {key} differs after loading into {resaved.name}"


def test_fsdp_evaluates_uneven_shards_and_counts_each_sample_once(gangrun_env, tmp_path):
    # 33 eval samples on 2 ranks in micro-batches of 4: rank 0 had 5 batches and rank 1 had 4, and
    # FSDP's all-gather in rank 0's fifth forward waited forever for rank 1.
    uneven = [*TINY_GPT, "data.fake_eval_size=33", "train.eval_every=3"]
    run = gangrun(2, [*uneven, "train.parallel=fsdp", f"output_dir={tmp_path / 'fsdp'}"], gangrun_env, tmp_path,
                  config="gpt-tiny")
    code, output = run.finish(timeout=240)
    assert code == 0, output[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    evals = {row["step"]: row for row in rows if "eval_loss" in row}
    assert sorted(evals) == [3, STEPS]

    # The same weights evaluated by one process, which sees all 33 samples unpadded.
    cfg = load_config("gpt-tiny", [*uneven, f"output_dir={tmp_path / 'one'}", "checkpoint.resume=never"])
    world = init_world("cpu")
    single = build_run(cfg, world)
    Checkpointer(cfg, world).load(str(tmp_path / "fsdp" / "checkpoints" / f"step-{STEPS:08d}"), single.parts)
    expected = evaluate(single, cfg)
    assert evals[STEPS]["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
    assert evals[STEPS]["eval_accuracy"] == pytest.approx(expected["eval_accuracy"], abs=1e-9)
