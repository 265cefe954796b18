"""The training loop, top to bottom on one screen; each component decides for itself when it acts.

The checkpointer decides when to save, metrics when to log, the stop flag when the ranks agree on
a stop. Everything the loop opens is closed on any exit, exceptions included.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from train import testhooks
from train.checkpoint import Checkpointer, TrainingParts, TrainState
from train.config import Config, accumulation_steps
from train.contract import EXIT_REQUEUE
from train.data import DataBundle, build_data, eval_loader, train_loader, use_pinned_memory
from train.distributed import World, all_reduce_sum
from train.flops import Throughput, measure_throughput
from train.memory import checkpoint_activations
from train.metrics import Metrics, log
from train.models import build_model, use_channels_last
from train.parallel import clip_grad_norm, no_grad_sync, resolve_mode, wrap_model
from train.precision import Precision, build_precision, set_tf32
from train.progress import Progress
from train.recorder import NoRecorder, open_recorder
from train.signals import StopFlag
from train.stream import DataStream


def fit(cfg: Config, world: World, on_finish: Callable[[TrainingParts], None] | None = None,
        progress: Progress | None = None) -> str | None:
    """Train to ``train.max_steps``, or to a stop all ranks agreed on; returns what stopped it, if anything.

    ``on_finish`` sees the trained parts once the last checkpoint is committed (to export weights,
    say). ``progress`` reports each phase and step to the node agent. The model and its DDP/FSDP
    wrapper live in this frame only, so they are freed when it returns, before the process group is
    (see train.distributed.close_world).
    """
    t = cfg.train
    progress = progress or Progress({})
    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(StopFlag())
        run = build_run(cfg, world)
        checkpointer = cleanup.enter_context(Checkpointer(cfg, world, progress))
        # A stop noted while importing, loading data or building the model: nothing to save.
        if stop.agreed(world):
            return stop.name
        # The same command starts and restarts a run: resume first, from the newest commit.
        checkpointer.resume(run.parts)
        if stop.agreed(world):
            return stop.name
        metrics = cleanup.enter_context(Metrics(Path(cfg.output_dir), world, run.parts.state.step, t.max_steps,
                                                t.log_every, t.global_batch_size, cfg.metrics.tensorboard, progress,
                                                run.throughput))
        recorder = cleanup.enter_context(open_recorder(t.record_samples, Path(cfg.output_dir), world.rank))
        log.info(run.describe(cfg))
        state = run.parts.state
        progress.phase("train", state.step)
        while state.step < t.max_steps:
            lr = cfg.optim.lr * lr_factor(state.step, cfg.optim.warmup_steps, t.max_steps,
                                          cfg.optim.min_lr / cfg.optim.lr)
            started = time.perf_counter()
            loss, grad_norm, compute_s = train_step(run, cfg, lr, recorder, checkpointer)
            progress.step_done(state.step, time.perf_counter() - started, compute_s)
            testhooks.at_step_boundary(world.rank, state.step)
            last = state.step == t.max_steps
            metrics.after_step(state.step, run.parts.data.epoch, loss, grad_norm, lr)
            if (t.eval_every and state.step % t.eval_every == 0) or last:
                progress.phase("eval")
                metrics.after_eval(state.step, run.parts.data.epoch, evaluate(run, cfg))
                progress.phase("train")
            # No stop check at the last step: it saves and exits 0 anyway.
            stopping = not last and stop.requested(world)
            if stopping:
                log.info(f"stopping at step {state.step} on {stop.name}: saving, then exiting {EXIT_REQUEUE}")
            checkpointer.after_step(run.parts, last=last, stopping=stopping)
            if stopping:
                return stop.name
        checkpointer.after_run(run.parts)
        # Done: the rest (the rank table, the plot, on_finish) is teardown, which a stop waits for.
        progress.phase("teardown")
        metrics.after_run()
        if cfg.metrics.plot:
            metrics.plot()
        if on_finish is not None:
            on_finish(run.parts)
    return None


@dataclass
class Run:
    """What one run trains with: the parts a checkpoint restores, and how a step is taken."""

    parts: TrainingParts
    data: DataBundle
    mode: str
    precision: Precision
    accum: int
    world: World
    throughput: Throughput
    # The GPU path's options this run has on (tf32, channels_last, ...), as the log line names them.
    options: tuple[str, ...] = ()

    def describe(self, cfg: Config) -> str:
        t = cfg.train
        return (f"training: world {self.world.world_size}, {self.mode}, {t.precision}, device {self.world.device}, "
                f"global batch {t.global_batch_size} = {t.micro_batch_size} x {self.world.world_size} ranks x "
                f"{self.accum} micro-steps, {t.max_steps} steps" + "".join(f", {o}" for o in self.options))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine down to ``min_ratio`` at ``total`` steps: a function of the
    step alone, so a resumed run needs no scheduler state to continue the schedule exactly."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def use_fused(choice: str, optimizer: str, mode: str) -> bool:
    """``auto`` and ``true``: the optimizer's fused kernel, the whole update in one kernel per
    parameter instead of one per elementwise op, on CUDA and on the CPU alike (torch ships both). On
    the digits CNN's CPU step AdamW's update took 480 us, fused 180 us: 4 % of the step. Not SGD
    under FSDP: DTensor has no sharding rule for ``aten._fused_sgd_`` (torch 2.14), so that one keeps
    torch's default."""
    return choice != "false" and not (optimizer == "sgd" and mode == "fsdp")


def build_optimizer(model: nn.Module, cfg: Config, mode: str) -> torch.optim.Optimizer:
    o = cfg.optim
    # None, not False, when off: an explicit fused=False also turns off torch's default foreach kernels.
    fused = True if use_fused(o.fused, o.name, mode) else None
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               fused=fused)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay, fused=fused)


def build_run(cfg: Config, world: World) -> Run:
    """Data, model (wrapped for DDP or FSDP), optimizer and precision, seeded alike on every rank, with
    the GPU path's options resolved for this device."""
    t, device = cfg.train, world.device
    pinned = use_pinned_memory(cfg.data.pin_memory, device)
    data = build_data(cfg)
    loader = train_loader(data, cfg, world.rank, world.world_size, pin_memory=pinned)
    # The same seed on every rank so all start from identical weights (DDP also broadcasts).
    seed_everything(cfg.seed)
    model = build_model(cfg.model, data).to(device)
    set_tf32(device, t.tf32)
    channels_last = use_channels_last(t.channels_last, cfg.model.name, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    throughput = measure_throughput(cfg.model, model, data, device)
    options = [name for name, on in (("tf32", t.tf32 and device.type == "cuda"), ("channels_last", channels_last),
                                     ("pinned memory", pinned)) if on]
    if t.activation_checkpointing:
        # Before compiling and wrapping: each block's own forward recomputes, inside FSDP's per-block hooks.
        options.append(f"activation checkpointing of {checkpoint_activations(model)} blocks")
    if t.compile:
        # Compile the module, then wrap it: torch.compile(DDP(m)) silently runs eagerly.
        model = torch.compile(model)  # type: ignore[assignment]
    mode = resolve_mode(t.parallel, world)
    model = wrap_model(model, mode, world, t.precision, t.ddp_reduce)
    precision = build_precision(t.precision, device, autocast=mode != "fsdp")
    optimizer = build_optimizer(model, cfg, mode)
    if optimizer.defaults["fused"]:
        options.append("fused optimizer")
    stream = DataStream(loader, device, t.global_batch_size,
                        torch.channels_last if channels_last else torch.preserve_format)
    parts = TrainingParts(model, optimizer, precision.scaler, TrainState(), stream)
    # Per-rank randomness (dropout, augmentation) differs across ranks from here on.
    seed_everything(cfg.seed + world.rank)
    return Run(parts, data, mode, precision, accumulation_steps(t, world.world_size), world, throughput,
               tuple(options))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Classification (B, C) and language modelling (B, T, V) alike: flatten to rows."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction=reduction)


class StagingWait(Protocol):
    """What a step needs of the checkpointer: to wait, before the optimizer step, for an async save's
    copy of the state (train.checkpoint.Checkpointer)."""

    def wait_for_staging(self) -> None: ...


def train_step(run: Run, cfg: Config, lr: float, recorder: NoRecorder,
               checkpointer: StagingWait) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step over ``accum`` micro-batches; returns (local loss, grad norm, compute seconds).

    Loss and grad norm stay tensors, so a GPU step does not wait for them: they are read only when
    logged. Compute is this rank's own work, the time outside backward (where DDP waits for its
    peers' gradients): data, forward and loss, and the optimizer step. On CUDA it is launch time.
    """
    parts, scaler = run.parts, run.precision.scaler
    compute_s = 0.0
    total: torch.Tensor | None = None
    for micro in range(run.accum):
        started = time.perf_counter()
        x, y, index = parts.data.next()
        recorder.saw(index)
        with no_grad_sync(parts.model, final_micro_step=micro == run.accum - 1):
            with run.precision.autocast():
                loss = cross_entropy(parts.model(x), y)
                # Dividing by 1 and adding to 0 change no bit, only the step's time.
                if run.accum > 1:
                    loss = loss / run.accum
            compute_s += time.perf_counter() - started
            (scaler.scale(loss) if scaler else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    started = time.perf_counter()
    if scaler:
        # Clip the true gradients, not the scaled ones.
        scaler.unscale_(parts.optimizer)
    grad_norm = clip_grad_norm(parts.model, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
    # An async checkpoint may still be copying the weights and optimizer state this step changes.
    checkpointer.wait_for_staging()
    for group in parts.optimizer.param_groups:
        group["lr"] = lr
    if scaler:
        scaler.step(parts.optimizer)
        scaler.update()
    else:
        parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.state.step += 1
    parts.state.samples_seen += cfg.train.global_batch_size
    parts.data.step_done()
    recorder.step(parts.state.step, parts.data.epoch)
    compute_s += time.perf_counter() - started
    assert total is not None, "accum is at least 1"
    return total, grad_norm, compute_s + testhooks.slow_down(run.world.rank, compute_s)


@torch.no_grad()
def evaluate(run: Run, cfg: Config) -> dict[str, float]:
    """Loss and accuracy over the whole eval set, each sample counted once, summed over ranks.

    Every rank runs the same number of equal batches (padding marked ``real = 0``), so FSDP's
    all-gathers and DDP's buffer broadcasts in forward always find their peers.
    """
    model, world = run.parts.model, run.world
    model.eval()
    loss_sum = correct = count = 0.0
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = eval_loader(
        run.data, cfg, world.rank, world.world_size)
    if testhooks.extra_eval_batch(world.rank):
        batches = itertools.chain(batches, itertools.islice(eval_loader(run.data, cfg, world.rank,
                                                                        world.world_size), 1))
    for x, y, real in batches:
        x, y = x.to(world.device), y.to(world.device)
        # One weight per target: per sample for classes, per token for sequences.
        weight = real.to(world.device).view(-1, *([1] * (y.dim() - 1))).expand_as(y).reshape(-1)
        with run.precision.autocast():
            logits = model(x)
        losses = cross_entropy(logits, y, reduction="none")
        loss_sum += (losses * weight).sum().item()
        correct += ((logits.argmax(-1).reshape(-1) == y.reshape(-1)).float() * weight).sum().item()
        count += weight.sum().item()
    model.train()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], world)
    return {"eval_loss": loss_sum / count, "eval_accuracy": correct / count}
