"""Wrap a model for data parallelism: ``ddp``, ``fsdp`` (FSDP2 ``fully_shard``) or ``none``."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from train.distributed import World


def resolve_mode(mode: str, world: World) -> str:
    """``auto`` means DDP when there is more than one rank, plain otherwise."""
    if mode == "auto":
        return "ddp" if world.world_size > 1 else "none"
    return mode


def mixed_precision_policy(precision: str) -> MixedPrecisionPolicy:
    # bf16 compute with fp32 gradient reduction; FSDP casts, so the loop runs no autocast.
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_fsdp(model: nn.Module, world: World, precision: str) -> nn.Module:
    """``fully_shard`` each transformer block, then the root (embeddings, head and the rest).

    Sharding per block lets FSDP free one block's gathered weights before the next is gathered.
    """
    mesh = init_device_mesh(world.device.type, (world.world_size,))
    policy = mixed_precision_policy(precision)
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def wrap_model(model: nn.Module, mode: str, world: World, precision: str = "fp32") -> nn.Module:
    if mode == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    if mode == "fsdp":
        return shard_fsdp(model, world, precision)
    return model


def no_grad_sync(model: nn.Module, final_micro_step: bool) -> ContextManager:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-step."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(final_micro_step)
    elif isinstance(model, DistributedDataParallel) and not final_micro_step:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip to ``max_norm`` (inf: measure only); returns the global norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    # Under FSDP the norm is a DTensor over the shards; its full value is the global norm.
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return norm.item()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model
