"""Activation memory: recompute each block's activations in backward instead of keeping them, and the peak held."""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from train.config import ConfigError


def checkpointed_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks whose activations are recomputed: each transformer block, or each ResNet residual block.

    A ResNet block holds BatchNorms, whose running statistics its recompute updates a second time from
    the same batch (as torchvision's DenseNet ``memory_efficient`` does); the gradients are unchanged.
    """
    from torchvision.models import ResNet

    from train.models import TinyGPT

    if isinstance(model, TinyGPT):
        return list(model.blocks)
    if isinstance(model, ResNet):
        return [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    raise ConfigError("train.activation_checkpointing", f"{type(model).__name__} has no blocks to checkpoint",
                      "set train.activation_checkpointing=false")


def checkpoint_activations(model: nn.Module) -> int:
    """Make each block of ``model`` recompute its forward in backward; returns how many blocks.

    Only each block's input is kept; its inner activations are recomputed when backward reaches it.
    ``use_reentrant=False`` is torch's recommended form: it works with torch.compile, keeps the RNG
    state (dropout recomputes the same mask) and needs no input that requires grad. The blocks keep
    their names (the forward is replaced, not the module), so a checkpoint loads with it on or off.
    Apply it before torch.compile and before DDP/FSDP wrap the blocks.
    """
    blocks = checkpointed_blocks(model)
    for block in blocks:
        block.forward = _recomputed(block.forward)
    return len(blocks)


def _recomputed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def peak_memory_gib(device: torch.device) -> float:
    """The most memory this process has held, in GiB.

    On CUDA, the peak of the tensors allocated on this rank's GPU (``max_memory_allocated``: no
    device sync, and not the allocator's reserve). On the CPU, the process's peak resident set
    (``getrusage``; Linux reports KiB), which also counts Python, torch and the data.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
