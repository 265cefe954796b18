"""Rank-0 metrics: log lines, one JSONL history across resumes, TensorBoard when asked, curves.png at the end.

Metrics decides for itself when it acts: every rank hands it each step's loss, and every
``train.log_every`` steps (and at the last) it averages the loss over ranks and rank 0 writes a row.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import torch

from train.distributed import World, all_gather_floats, all_gather_objects, all_reduce_sum
from train.flops import RATE_KEYS, Throughput
from train.memory import peak_memory_gib
from train.progress import Progress
from train.stragglers import find_straggler, rank_table

log = logging.getLogger("train")
HISTORY = "metrics.jsonl"


def setup_logging(rank: int) -> None:
    """INFO on rank 0, WARNING elsewhere: one voice for progress, every rank for trouble."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stdout, force=True)


def keep_history(path: Path, upto_step: int) -> list[dict[str, Any]]:
    """The rows of ``path`` up to ``upto_step``, with the file rewritten to hold only those.

    A run resumed from step N redoes the steps after N, so rows logged past N by the attempt that
    stopped (a crash after the checkpoint) would repeat; they are dropped, atomically, before the
    resumed run appends. A fresh run (N = 0) starts a fresh history.
    """
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [row for row in rows if row["step"] <= upto_step]
    if len(kept) != len(rows):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in kept)
        os.replace(tmp, path)
    return kept


def _per_device(row: dict[str, Any]) -> str:
    """A row's rate per device, MFU and peak memory, as its log line shows them."""
    text = "".join(f"  {row[key]:.0f} {unit}/s/device" for unit, key in RATE_KEYS.items() if key in row)
    if "mfu" in row:
        text += f"  mfu {row['mfu']:.1%}"
    return f"{text}  peak mem {row['peak_mem_gib']:.2f} GiB"


class Metrics:
    """The training log of one run; writes only on rank 0, but every rank must call ``after_step``."""

    def __init__(self, output_dir: Path, world: World, start_step: int, max_steps: int, log_every: int,
                 global_batch: int, tensorboard: bool, progress: Progress | None = None,
                 throughput: Throughput | None = None) -> None:
        self.output_dir, self.world = output_dir, world
        # Tokens or images per second per device and MFU in each row, where the model's are known.
        self.throughput = throughput
        # Every rank's own step times, for the straggler line of each window and the table at the end.
        self.progress = progress or Progress({})
        self.enabled = world.is_main
        self.max_steps, self.log_every, self.global_batch = max_steps, log_every, global_batch
        self.rows: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        self._tb: Any = None
        self._progress: Any = None
        self._window_loss = torch.zeros((), device=world.device)
        self._window_steps = 0
        self._window_start = time.perf_counter()
        if not self.enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.rows = keep_history(output_dir / HISTORY, start_step)
        self._file = (output_dir / HISTORY).open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("metrics.tensorboard=true needs the tensorboard package: "
                                   "pip install 'gangrun[tensorboard]'") from err
            self._tb = SummaryWriter(str(output_dir / "tensorboard"))
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._progress = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for closable in (self._progress, self._file, self._tb):
            if closable is not None:
                closable.close()

    def after_step(self, step: int, epoch: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        """Count this step; on a log step, average over ranks and write a row. ``loss`` stays a
        tensor until then, so a GPU step never waits for it."""
        self._window_loss, self._window_steps = self._window_loss + loss, self._window_steps + 1
        if self._progress is not None:
            self._progress.update(1)
        if step % self.log_every and step != self.max_steps:
            return
        # Read the loss first: .item() waits for the GPU to finish the window's steps, so the window's
        # time is theirs, not only the time the CPU took to launch them.
        window_loss = self._window_loss.item()
        elapsed = time.perf_counter() - self._window_start
        (loss_sum,) = all_reduce_sum([window_loss / self._window_steps], self.world)
        computes = all_gather_floats(self.progress.recent_compute(self._window_steps), self.world)
        row = {"step": step, "epoch": epoch, "loss": loss_sum / self.world.world_size, "lr": lr,
               "grad_norm": grad_norm.item(), "samples_per_s": self._window_steps * self.global_batch / elapsed}
        if self.throughput is not None:
            row.update(self.throughput.window(self._window_steps * self.global_batch, elapsed, self.world.world_size))
        row["peak_mem_gib"] = peak_memory_gib(self.world.device)
        self.write(row)
        log.info(f"step {step:>6}  epoch {epoch:>3}  loss {row['loss']:.4f}  lr {lr:.2e}  "
                 f"grad_norm {row['grad_norm']:.3f}  {row['samples_per_s']:.0f} samples/s{_per_device(row)}")
        straggler = find_straggler(computes)
        if straggler is not None and self.enabled:
            log.warning(f"straggler: {straggler.describe()} in steps {step - self._window_steps + 1}-{step}")
        self._window_loss, self._window_steps = torch.zeros_like(self._window_loss), 0
        self._window_start = time.perf_counter()

    def after_run(self) -> None:
        """The per-rank table of the whole run and its straggler verdict; every rank must call it."""
        rows = all_gather_objects(self.progress.table_row(), self.world)
        if not self.enabled:
            return
        log.info(rank_table(rows))
        straggler = find_straggler([row["compute_p50"] for row in rows])
        if straggler is not None:
            log.warning(f"straggler: {straggler.describe()} over the run")

    def after_eval(self, step: int, epoch: int, results: dict[str, float]) -> None:
        self.write({"step": step, "epoch": epoch, **results})
        log.info(f"eval  step {step:>6}  loss {results['eval_loss']:.4f}  accuracy {results['eval_accuracy']:.4f}")
        # Evaluation time is not training throughput.
        self._window_start = time.perf_counter()

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            return
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def plot(self, metric: str = "eval_accuracy") -> Path | None:
        """Loss and ``metric`` against step over the whole history, resumes included."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
        train = [r for r in self.rows if "loss" in r]
        evals = [r for r in self.rows if metric in r]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
        ax_loss.set(xlabel="step", ylabel="train loss", title="training loss")
        ax_metric.plot([r["step"] for r in evals], [r[metric] for r in evals], marker="o")
        ax_metric.set(xlabel="step", ylabel=metric, title=metric.replace("_", " "))
        fig.tight_layout()
        path = self.output_dir / "curves.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        log.info(f"curves: {path}")
        return path
