"""Whether /dev/shm holds what async saves stage: DCP's stager copies each rank's state into shared memory."""

from __future__ import annotations

import math
import shutil
from typing import Any

import torch

SHM = "/dev/shm"
MIB = 1 << 20


def shm_free_bytes(path: str = SHM) -> int | None:
    """Free bytes in /dev/shm, or None where there is none to measure."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def state_bytes(tree: Any) -> int:
    """The bytes of every tensor in a state dict, each rank's own shard of a DTensor."""
    if isinstance(tree, torch.Tensor):
        local = tree.to_local() if hasattr(tree, "to_local") else tree
        return local.numel() * local.element_size()
    if isinstance(tree, dict):
        return sum(state_bytes(value) for value in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(state_bytes(value) for value in tree)
    return 0


def staging_shortfall(free: int | None, per_rank: int, local_ranks: int) -> str | None:
    """Why this node's /dev/shm cannot hold the staged state of its ``local_ranks`` ranks, or None."""
    need = per_rank * local_ranks
    if free is None or free >= need:
        return None
    return (f"/dev/shm has {free // MIB} MiB free, short of the {math.ceil(need / MIB)} MiB async saves stage "
            f"({local_ranks} rank(s) on this node x {math.ceil(per_rank / MIB)} MiB)")
