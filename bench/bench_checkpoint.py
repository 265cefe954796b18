"""Checkpoint I/O side by side in one run: save and load vs raw I/O of the same bytes; what async saves cost training.

Per repeat, interleaved: a raw write+fsync of every rank's shard bytes and our synchronous save
(the training program's Checkpointer: DCP, commit, pruning), then a raw read of those bytes into
the tensors and our load of that checkpoint (both reads from the disk: the files are dropped from
the page cache first), each pair in turns so that neither side always goes first; K plain
training steps, and an async save followed by the same K steps and the wait for its commit.
"Blocked" is what the async save added to those K steps' wall time, its call included, so work it
steals from training later counts too. Beside it: the call's own time, the CPU time a sync save
takes in rank 0's process (where no core is spare, moving that work to another process cannot hide
it), and what the copy into shared memory alone adds to the same K steps, with nothing written: the
least an async save can block there. The I/O rows are medians over pairs of repeats (an even count:
R is rounded up), the others medians of the repeats.

The state is a FSDP-sharded transformer plus AdamW state, about 192 MB in all (``--d-model``,
``--layers`` change it), on 2 ranks (on a 2-core machine the checkpoint process competes with
training for the cores) and on 1 rank (the spare core shows the cost without that contention).
``--s3`` adds the same save and load against moto's S3 server on loopback, beside a raw upload and
download of the same bytes. Nothing here asserts.

usage: python bench/bench_checkpoint.py [--repeats R] [--ranks 2 1] [--s3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import Row, read_rows, report, write_rows  # noqa: E402

BIN = Path(sys.executable).parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Five pairs: here a buffered save's write() calls took 0.4-0.6 s of CPU instead of 25 ms in two
    # or three of six repeats, page cache for new files drawn from memory the VM had not touched
    # lately (README, Performance), and the median of three pairs was often one of those.
    parser.add_argument("--repeats", type=int, default=10, help="rounded up to an even count")
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--s3", action="store_true", help="also save to and load from moto's S3 server")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--s3-url", help=argparse.SUPPRESS)
    return parser.parse_args()


@contextlib.contextmanager
def s3_endpoint(enabled: bool, folder: Path) -> Iterator[dict[str, str]]:
    """The client environment of a moto S3 server on loopback (tests/s3_server.py), or {}."""
    if not enabled:
        yield {}
        return
    from tests.s3_server import running_s3_server

    with running_s3_server(folder) as server:
        yield server.env()


def launch(args: argparse.Namespace) -> list[Row]:
    """Run this file's worker half under gangrun on each rank count, as training would run."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as tmp, s3_endpoint(args.s3, Path(tmp)) as s3_env:
        for ranks in args.ranks:
            out = Path(tmp) / f"rows-{ranks}.json"
            argv = [str(BIN / "gangrun"), "run", "--nproc-per-node", str(ranks), __file__, "--worker", str(out),
                    "--repeats", str(args.repeats), "--d-model", str(args.d_model), "--layers", str(args.layers)]
            if s3_env and ranks == max(args.ranks):
                argv += ["--s3-url", "s3://gangrun-checkpoints/bench"]
            # One intra-op thread per rank, as torchrun gives several ranks: with one rank, a core stays
            # spare for the checkpoint process instead of torch's second thread.
            env = {**os.environ, **s3_env, "MPLCONFIGDIR": tmp, "GANGRUN_BENCH_TMP": tmp, "OMP_NUM_THREADS": "1"}
            result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tmp)
            if result.returncode != 0:
                raise SystemExit(f"bench_checkpoint on {ranks} rank(s) exited {result.returncode}:\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            rows += read_rows(out)
    return rows


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from train.checkpoint import Checkpointer
    from train.config import load_config
    from train.distributed import close_world, init_world
    from train.loop import build_run, train_step
    from train.recorder import NoRecorder

    # As the training program does once imported (train/__main__.py): without it, a full collection
    # walked torch's objects for 0.1 s in one load of every run, a pause no training rank takes.
    gc.freeze()
    tmp = Path(os.environ["GANGRUN_BENCH_TMP"])
    overrides = [f"model.d_model={args.d_model}", f"model.n_layer={args.layers}", "model.n_head=8",
                 "model.seq_len=32", "data.fake_train_size=256", "train.global_batch_size=4",
                 "train.micro_batch_size=2", "train.parallel=fsdp", "train.max_steps=1", "metrics.plot=false",
                 "checkpoint.every=0", "checkpoint.keep=2", "checkpoint.resume=never", f"output_dir={tmp}/run"]
    world = init_world("auto")
    n = world.world_size

    def saver(where: str, *more: str) -> Checkpointer:
        return Checkpointer(load_config("gpt-tiny", [*overrides, f"checkpoint.dir={where}", *more]), world)

    cfg = load_config("gpt-tiny", overrides)
    run = build_run(cfg, world)
    local_dir = tmp / f"ckpt-{n}"
    sync_saver = saver(str(local_dir / "sync"))
    async_saver = saver(str(local_dir / "async"), "checkpoint.async_save=true")

    def step() -> None:
        train_step(run, cfg, cfg.optim.lr, NoRecorder(), async_saver)

    step()  # AdamW state exists only after a step
    model_sd, optim_sd = get_state_dict(run.parts.model, run.parts.optimizer)
    local = [t.to_local() if hasattr(t, "to_local") else t for t in _tensors((model_sd, optim_sd))]
    local_bytes = sum(t.numel() * t.element_size() for t in local)
    total = torch.tensor([local_bytes], dtype=torch.float64)
    dist.all_reduce(total)
    total_mb = total.item() / 1e6
    raw_path = local_dir / f"raw-rank{world.rank}.bin"
    raw_path.parent.mkdir(parents=True, exist_ok=True)

    def timed(action: Callable[[], Any], before: Callable[[], Any] | None = None) -> float:
        """``action``'s wall time on the slowest rank, ``before`` (untimed) first."""
        if before is not None:
            before()
        dist.barrier()
        start = time.perf_counter()
        action()
        dist.barrier()
        return time.perf_counter() - start

    def raw_write() -> None:
        with raw_path.open("wb") as f:
            for tensor in local:
                f.write(tensor.detach().contiguous().view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())

    def raw_read() -> None:
        with raw_path.open("rb", buffering=0) as f:
            for tensor in local:
                f.readinto(tensor.detach().view(torch.uint8).numpy().data)

    def evict(*paths: Path) -> Callable[[], None]:
        """Drop ``paths`` (files, or every file under a folder) from the page cache, so a read comes
        from the disk as after a restart on another node (no root needed)."""
        def run() -> None:
            for path in paths:
                for file in ([path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]):
                    fd = os.open(file, os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        return run

    def newest(checkpointer: Checkpointer) -> str:
        return checkpointer.store.path(run.parts.state.step)

    # Warm up: the first save builds DCP's plan, the first async save starts its checkpoint process.
    sync_saver.save(run.parts, blocking=True)
    step()
    async_saver.save(run.parts, blocking=False)
    async_saver.wait()
    plain_step = statistics.median(timed(step) for _ in range(3))
    sync_estimate = timed(lambda: sync_saver.save(run.parts, blocking=True))
    # Enough steps to outlast the save running behind them, so all it takes from training is counted.
    k = max(2, math.ceil(2 * sync_estimate / plain_step))

    def steps(count: int) -> None:
        for _ in range(count):
            step()

    def sync_save() -> None:
        start = time.process_time()
        sync_saver.save(run.parts, blocking=True)
        figures["save_cpu"].append(time.process_time() - start)

    def async_then_steps() -> None:
        start = time.perf_counter()
        async_saver.save(run.parts, blocking=False)
        figures["async_call"].append(time.perf_counter() - start)
        steps(k)
        async_saver.wait()

    copy_only = CopyOnly(model_sd, optim_sd)

    def copy_then_steps() -> None:
        copy_only.start()
        for _ in range(k):
            train_step(run, cfg, cfg.optim.lr, NoRecorder(), copy_only)

    figures: dict[str, list[float]] = {name: [] for name in ("raw_write", "save", "save_cpu", "raw_read", "load",
                                                             "steps", "steps_with_async", "async_call",
                                                             "steps_with_copy")}

    def in_turns(repeat: int, *pair: tuple[str, Callable[[], Any], Callable[[], Any] | None]) -> None:
        """Time both, each first in every other repeat (see paired_ratios)."""
        for name, action, before in pair if repeat % 2 == 0 else reversed(pair):
            figures[name].append(timed(action, before))

    for repeat in range(2 * math.ceil(args.repeats / 2)):
        in_turns(repeat, ("raw_write", raw_write, None),
                 ("save", sync_save, None))
        in_turns(repeat, ("raw_read", raw_read, evict(raw_path)),
                 ("load", lambda: sync_saver.load(newest(sync_saver), run.parts), evict(Path(newest(sync_saver)))))
        figures["steps"].append(timed(lambda: steps(k)))
        figures["steps_with_async"].append(timed(async_then_steps))
        figures["steps_with_copy"].append(timed(copy_then_steps))
    s3 = s3_figures(args.s3_url, local, saver, run.parts, timed, world.rank, args.repeats) if args.s3_url else {}
    async_saver.close()
    sync_saver.close()
    copy_only.close()
    raw_path.unlink()
    if world.is_main:
        m = {name: statistics.median(values) for name, values in {**figures, **s3}.items()}
        where = f"{n} rank{'s' if n > 1 else ''}, {total_mb:.0f} MB, {os.cpu_count()} cores"
        save = paired_ratios(figures["raw_write"], figures["save"])
        copy_blocked = max(0.0, m["steps_with_copy"] - m["steps"])
        load = paired_ratios(figures["raw_read"], figures["load"])
        rows = [Row(f"checkpoint save MB/s / raw write+fsync ({where})", statistics.median(save), 0.8, ">=",
                    detail=f"{total_mb / m['save']:.0f} vs {total_mb / m['raw_write']:.0f} MB/s (medians); "
                           f"pairs {_figures(save)}",
                    repeats=save, raw={"mb": total_mb, **m}),
                Row(f"checkpoint load MB/s / raw read ({where})", statistics.median(load), 0.8, ">=",
                    detail=f"{total_mb / m['load']:.0f} vs {total_mb / m['raw_read']:.0f} MB/s (medians), "
                           f"from the disk; pairs {_figures(load)}", repeats=load),
                Row(f"async save: training blocked / sync save ({where})",
                    max(0.0, m["steps_with_async"] - m["steps"]) / m["save"], 0.15, "<=",
                    detail=f"{max(0.0, m['steps_with_async'] - m['steps']):.3f} s over {k} steps "
                           f"({m['steps'] / k:.3f} s each; the call {m['async_call']:.3f} s) vs a sync save's "
                           f"{m['save']:.3f} s, which used {m['save_cpu']:.3f} s of CPU on rank 0; the copy "
                           f"into shared memory alone, no write: {copy_blocked:.3f} s "
                           f"({copy_blocked / m['save']:.2f})")]
        if s3:
            rows += [Row(f"S3 save MB/s / raw upload (moto on loopback, {where})", m["s3_put"] / m["s3_save"], 0.8,
                         ">=", detail=f"{total_mb / m['s3_save']:.0f} vs {total_mb / m['s3_put']:.0f} MB/s"),
                     Row(f"S3 load MB/s / raw download (moto on loopback, {where})", m["s3_get"] / m["s3_load"], 0.8,
                         ">=", detail=f"{total_mb / m['s3_load']:.0f} vs {total_mb / m['s3_get']:.0f} MB/s")]
        for row in rows:
            print(row.line(), flush=True)
        write_rows(args.worker, rows)
    close_world()


def s3_figures(url: str, local: list, saver: Callable[..., Any], parts: Any,
               timed: Callable[[Callable[[], Any]], float], rank: int, repeats: int) -> dict[str, list[float]]:
    """Our save and load against the S3 server, beside one PUT and one GET of each rank's same bytes."""
    import s3fs
    import torch

    fs = s3fs.S3FileSystem()
    blob = b"".join(t.detach().contiguous().view(torch.uint8).numpy().tobytes() for t in local)
    raw = f"{url.removeprefix('s3://')}/raw-rank{rank}.bin"
    checkpointer = saver(url)
    checkpointer.save(parts, blocking=True)  # warm: the bucket's listing, the plan
    figures: dict[str, list[float]] = {"s3_put": [], "s3_save": [], "s3_get": [], "s3_load": []}
    for _ in range(repeats):
        figures["s3_put"].append(timed(lambda: fs.pipe_file(raw, blob)))
        figures["s3_save"].append(timed(lambda: checkpointer.save(parts, blocking=True)))
        figures["s3_get"].append(timed(lambda: fs.cat_file(raw)))
        figures["s3_load"].append(timed(lambda: checkpointer.load(checkpointer.store.display(
            checkpointer.store.path(parts.state.step)), parts)))
    checkpointer.close()
    return figures


class CopyOnly:
    """What an async save's copy alone takes from training, with no write after it: the model and
    optimizer state staged as an async save stages them (train.staging_room), beside the next
    steps, whose optimizer step waits for it. Stands in for the Checkpointer in train_step."""

    def __init__(self, *state: Any) -> None:
        from train.staging_room import SharedMemoryStager

        self.state = {str(i): part for i, part in enumerate(state)}
        self.stager = SharedMemoryStager(beside=True)
        self.copying: Any = None

    def start(self) -> None:
        self.copying = self.stager.stage(self.state)

    def wait_for_staging(self) -> None:
        copying, self.copying = self.copying, None
        if copying is not None:
            copying.result()

    def close(self) -> None:
        self.stager.close()


def paired_ratios(reference: list[float], ours: list[float]) -> list[float]:
    """Reference time / our time over each two repeats, one in each order: on this VM whichever of
    two reads came second read the file written last and ran at about half the speed of the other,
    both ways round (a fixed order once put our load at 0.5 of a raw read, and at 1.0 going
    first). A pair holds that penalty once on each side; the row is the median of the pairs."""
    return [sum(reference[i:i + 2]) / sum(ours[i:i + 2]) for i in range(0, len(ours) - 1, 2)]


def _figures(values: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def _tensors(tree: Any) -> list:
    import torch

    if isinstance(tree, torch.Tensor):
        return [tree] if tree.dim() > 0 else []
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in _tensors(value)]
    return []


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    rows = launch(args)
    print(f"checkpoint I/O, medians of {args.repeats} interleaved repeats")
    report(rows, args.json)


if __name__ == "__main__":
    main()
