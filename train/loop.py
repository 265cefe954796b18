"""The Trainer: step, accumulate, clip, step the optimizer, log, evaluate, checkpoint. One screen of loop."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train.checkpoint import Checkpointer, TrainingParts
from train.config import Config, accumulation_steps
from train.data import build_data, eval_loader, train_loader
from train.distributed import World, all_reduce_sum
from train.metrics import MetricsWriter, log
from train.models import build_model
from train.parallel import clip_grad_norm, no_grad_sync, resolve_mode, wrap_model
from train.precision import build_precision
from train.signals import EXIT_REQUEUE, StopFlag


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Classification (B, C) and language modelling (B, T, V) alike: flatten to rows."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


@dataclass
class TrainState:
    """Where training stands; a checkpoint saves this, a resume restores it."""

    step: int = 0
    epoch: int = 0
    samples_seen: int = 0
    # Global samples consumed from this epoch's order: the data position a resume continues from.
    epoch_samples: int = 0


class Trainer:
    def __init__(self, cfg: Config, world: World) -> None:
        self.cfg, self.world = cfg, world
        self.accum = accumulation_steps(cfg.train, world.world_size)
        self.data = build_data(cfg)
        self.loader = train_loader(self.data, cfg, world.rank, world.world_size)
        self.sampler = self.loader.sampler
        # The same seed on every rank so all start from identical weights (DDP also broadcasts).
        seed_everything(cfg.seed)
        model = build_model(cfg.model, self.data).to(world.device)
        if cfg.train.compile:
            # Compile the module, then wrap it: torch.compile(DDP(m)) silently runs eagerly.
            model = torch.compile(model)
        self.mode = resolve_mode(cfg.train.parallel, world)
        self.model = wrap_model(model, self.mode, world, cfg.train.precision, cfg.train.ddp_reduce)
        self.optimizer = build_optimizer(self.model, cfg)
        min_ratio = cfg.optim.min_lr / cfg.optim.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, cfg.optim.warmup_steps, cfg.train.max_steps, min_ratio))
        self.precision = build_precision(cfg.train.precision, world.device, autocast=self.mode != "fsdp")
        self.state = TrainState()
        # Per-rank randomness (dropout, augmentation) differs across ranks from here on.
        seed_everything(cfg.seed + world.rank)
        self.metrics = MetricsWriter(Path(cfg.output_dir), world.is_main, cfg.metrics.tensorboard)
        self.parts = TrainingParts(self.model, self.optimizer, self.scheduler, self.precision.scaler,
                                   self.state, self.sampler)
        self.checkpointer = Checkpointer(cfg, world)
        resume_from = self.checkpointer.find_resume()
        if resume_from is not None:
            self.checkpointer.load(resume_from, self.parts)
        self.stop = StopFlag()
        self.stopped_by: str | None = None
        self.samples_file = None
        if cfg.train.record_samples:
            folder = Path(cfg.output_dir) / "samples"
            folder.mkdir(parents=True, exist_ok=True)
            self.samples_file = (folder / f"rank{world.rank}.jsonl").open("a", buffering=1)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Micro-batches (inputs, targets, sample indices) forever, from the sampler's current position."""
        while True:
            self.sampler.set_epoch(self.state.epoch)
            for x, y, index in self.loader:
                yield x.to(self.world.device, non_blocking=True), y.to(self.world.device, non_blocking=True), index
            self.state.epoch += 1
            self.state.epoch_samples = 0
            self.sampler.start = 0

    def train_step(self, batches: Iterator) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over ``accum`` micro-batches; returns (local loss, grad norm) as
        tensors, so a GPU step does not wait for them: they are read only when logged."""
        scaler = self.precision.scaler
        total = torch.zeros((), device=self.world.device)
        seen: list[int] = []
        for micro in range(self.accum):
            x, y, index = next(batches)
            if self.samples_file is not None:
                seen += index.tolist()
            with no_grad_sync(self.model, final_micro_step=micro == self.accum - 1):
                with self.precision.autocast():
                    loss = cross_entropy(self.model(x), y) / self.accum
                (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach()
        if scaler:
            # Clip the true gradients, not the scaled ones.
            scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = clip_grad_norm(self.model, clip)
        # An async checkpoint may still be copying the weights and optimizer state this step changes.
        self.checkpointer.wait_for_staging()
        if scaler:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        self.state.samples_seen += self.cfg.train.global_batch_size
        self.state.epoch_samples += self.cfg.train.global_batch_size
        if self.samples_file is not None:
            self.samples_file.write(json.dumps({"step": self.state.step, "epoch": self.state.epoch,
                                                "indices": seen}) + "\n")
        return total, grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy over the whole eval set, summed over ranks."""
        self.model.eval()
        loss_sum = correct = count = 0.0
        for x, y in eval_loader(self.data, self.cfg, self.world.rank, self.world.world_size):
            x, y = x.to(self.world.device), y.to(self.world.device)
            with self.precision.autocast():
                logits = self.model(x)
            n = y.numel()
            loss_sum += cross_entropy(logits, y).item() * n
            correct += (logits.argmax(-1) == y).sum().item()
            count += n
        self.model.train()
        loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], self.world)
        return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count}

    def fit(self) -> dict[str, float]:
        cfg, t = self.cfg, self.cfg.train
        log.info(f"training: world {self.world.world_size}, {self.mode}, {t.precision}, device "
                 f"{self.world.device}, global batch {t.global_batch_size} = {t.micro_batch_size} x "
                 f"{self.world.world_size} ranks x {self.accum} micro-steps, {t.max_steps} steps")
        progress = None
        if self.world.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=t.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True)
        batches = self.batches()
        self.stop.install()
        window_loss, window_steps, window_start = torch.zeros((), device=self.world.device), 0, time.perf_counter()
        results: dict[str, float] = {}
        while self.state.step < t.max_steps:
            loss, grad_norm = self.train_step(batches)
            window_loss, window_steps = window_loss + loss, window_steps + 1
            if progress is not None:
                progress.update(1)
            last = self.state.step == t.max_steps
            if self.state.step % t.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                # Summed over ranks, so every rank paces its stop checks on the same number.
                loss_sum, seconds_sum = all_reduce_sum([window_loss.item() / window_steps, elapsed / window_steps],
                                                       self.world)
                mean_loss = loss_sum / self.world.world_size
                self.stop.pace(seconds_sum / self.world.world_size)
                row = {"step": self.state.step, "epoch": self.state.epoch, "loss": mean_loss,
                       "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                       "samples_per_s": window_steps * t.global_batch_size / elapsed}
                self.metrics.write(row)
                log.info(f"step {row['step']:>6}  epoch {row['epoch']:>3}  loss {mean_loss:.4f}  "
                         f"lr {row['lr']:.2e}  grad_norm {row['grad_norm']:.3f}  {row['samples_per_s']:.0f} samples/s")
                window_loss, window_steps, window_start = torch.zeros_like(window_loss), 0, time.perf_counter()
            if (t.eval_every and self.state.step % t.eval_every == 0) or last:
                results = self.evaluate()
                self.metrics.write({"step": self.state.step, "epoch": self.state.epoch, **results})
                log.info(f"eval  step {self.state.step:>6}  loss {results['eval_loss']:.4f}  "
                         f"accuracy {results['eval_accuracy']:.4f}")
                window_start = time.perf_counter()
            if not last and self.stop.due(self.state.step) and self.stop.agreed(self.world):
                self.stopped_by = self.stop.name
                log.info(f"stopping at step {self.state.step} on {self.stopped_by}: "
                         f"saving, then exiting {EXIT_REQUEUE}")
                self.checkpointer.save(self.parts, final=True)
                break
            every = cfg.checkpoint.every
            if last or (every and self.state.step % every == 0):
                self.checkpointer.save(self.parts, final=last)
        if self.checkpointer.saved_step != self.state.step:
            # A run that resumed at (or past) max_steps from elsewhere still leaves its checkpoint here.
            self.checkpointer.save(self.parts, final=True)
        self.stop.uninstall()
        self.checkpointer.close()
        if self.samples_file is not None:
            self.samples_file.close()
        if progress is not None:
            progress.close()
        if cfg.metrics.plot:
            path = self.metrics.plot("eval_accuracy")
            if path is not None:
                log.info(f"curves: {path}")
        self.metrics.close()
        return results
