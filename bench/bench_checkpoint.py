"""Prints, side by side in one run on 2 ranks: our checkpoint save's MB/s vs a raw write + fsync of the
same bytes, and how long an async save blocks training vs a synchronous save. Nothing here asserts.

The state is a FSDP-sharded transformer plus AdamW state, about 200 MB in all (``--d-model``,
``--layers`` change it), saved through the training program's own Checkpointer with commit and pruning.

usage: python bench/bench_checkpoint.py [--dir PATH_OR_URL] [--repeats R] [--d-model D] [--layers L]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="checkpoint folder (default: a new temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def launch(args: argparse.Namespace) -> int:
    """Run this file's worker half on 2 ranks under gangrun, as training would run."""
    folder = args.dir or tempfile.mkdtemp(prefix="bench-checkpoint-")
    argv = [str(BIN / "gangrun"), "run", "--nproc-per-node", "2", __file__, "--worker", "--dir", folder,
            "--repeats", str(args.repeats), "--d-model", str(args.d_model), "--layers", str(args.layers)]
    return subprocess.run(argv, env={**os.environ, "MPLCONFIGDIR": tempfile.mkdtemp()}).returncode


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from train.checkpoint import Checkpointer
    from train.config import load_config
    from train.distributed import close_world, init_world
    from train.loop import build_run, train_step
    from train.recorder import NoRecorder

    overrides = [f"model.d_model={args.d_model}", f"model.n_layer={args.layers}", "model.n_head=8",
                 "model.seq_len=32", "data.fake_train_size=256", "train.global_batch_size=4",
                 "train.micro_batch_size=2", "train.parallel=fsdp", "train.max_steps=1", "metrics.plot=false",
                 "checkpoint.every=0", "checkpoint.keep=2", "checkpoint.resume=never",
                 f"output_dir={tempfile.gettempdir()}/bench-checkpoint-run", f"checkpoint.dir={args.dir}"]
    cfg = load_config("gpt-tiny", overrides)
    world = init_world("auto")
    run = build_run(cfg, world)
    sync_saver = Checkpointer(cfg, world)
    async_saver = Checkpointer(load_config("gpt-tiny", [*overrides, "checkpoint.async_save=true"]), world)

    def step(saver: Checkpointer) -> None:
        train_step(run, cfg, cfg.optim.lr, NoRecorder(), saver)

    step(sync_saver)  # AdamW state exists only after a step
    model_sd, optim_sd = get_state_dict(run.parts.model, run.parts.optimizer)
    local = [t.to_local() if hasattr(t, "to_local") else t for t in _tensors((model_sd, optim_sd))]
    local_bytes = sum(t.numel() * t.element_size() for t in local)
    total_bytes = torch.tensor([local_bytes], dtype=torch.float64)
    dist.all_reduce(total_bytes)
    total_mb = total_bytes.item() / 2**20

    def timed(action) -> float:
        dist.barrier()
        start = time.perf_counter()
        action()
        dist.barrier()
        return time.perf_counter() - start

    raw_path = Path(args.dir if "://" not in args.dir else tempfile.gettempdir()) / f"raw-rank{world.rank}.bin"
    raw_path.parent.mkdir(parents=True, exist_ok=True)

    def raw_write() -> None:
        with raw_path.open("wb") as f:
            for tensor in local:
                f.write(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            f.flush()
            os.fsync(f.fileno())

    raw, sync, plain_step, async_call, async_step, async_total = [], [], [], [], [], []
    for _ in range(args.repeats):
        raw.append(timed(raw_write))
        sync.append(timed(lambda: sync_saver.save(run.parts, blocking=True)))
        plain_step.append(timed(lambda: step(sync_saver)))
        # What training feels: the save call plus the next step, which waits for staging before
        # its optimizer step; the rest of the save runs behind it.
        start = time.perf_counter()
        async_call.append(timed(lambda: async_saver.save(run.parts, blocking=False)))
        async_step.append(timed(lambda: step(async_saver)))
        async_saver.wait()
        dist.barrier()
        async_total.append(time.perf_counter() - start)
    async_saver.close()
    sync_saver.close()
    raw_path.unlink()
    if world.is_main:
        r, s, p, c, a = (statistics.median(x) for x in (raw, sync, plain_step, async_call, async_total))
        slowed = max(0.0, statistics.median(async_step) - p)
        b = c + slowed
        print(f"state: {total_mb:.0f} MB on {world.world_size} ranks (FSDP shards + AdamW), device {world.device}, "
              f"into {args.dir}; medians of {args.repeats}")
        print(f"raw write+fsync   {r:6.2f} s  {total_mb / r:7.0f} MB/s")
        print(f"dcp save (sync)   {s:6.2f} s  {total_mb / s:7.0f} MB/s   ratio to raw {r / s:.2f} (goal >= 0.8)")
        print(f"async: blocked    {b:6.2f} s   = save call {c:.2f} s + next step slowed {slowed:.2f} s "
              f"(step {p:.2f} s); committed after {a:.2f} s   blocked / sync save {b / s:.2f} (goal <= 0.15)")
    close_world()


def _tensors(tree) -> list:
    import torch

    if isinstance(tree, torch.Tensor):
        return [tree] if tree.dim() > 0 else []
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in _tensors(value)]
    return []


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        worker(arguments)
    else:
        sys.exit(launch(arguments))
