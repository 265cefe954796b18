"""Where async saves stage each rank's state: copies in shared memory kept between saves, and
whether /dev/shm holds them."""

from __future__ import annotations

import copy
import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor

SHM = "/dev/shm"
MIB = 1 << 20


def shm_free_bytes(path: str = SHM) -> int | None:
    """Free bytes in /dev/shm, or None where there is none to measure."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def tensor_leaves(tree: Any) -> list[torch.Tensor]:
    """Every tensor in a state dict, in the order its dicts, lists and tuples hold them."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in tensor_leaves(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in tensor_leaves(value)]
    return []


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor that holds ``tensor``'s memory on this rank: a DTensor's local shard, else itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def state_bytes(tree: Any) -> int:
    """The bytes of every tensor in a state dict, each rank's own shard of a DTensor."""
    shards = [local_shard(leaf) for leaf in tensor_leaves(tree)]
    return sum(shard.numel() * shard.element_size() for shard in shards)


def staging_shortfall(free: int | None, per_rank: int, local_ranks: int) -> str | None:
    """Why this node's /dev/shm cannot hold the staged state of its ``local_ranks`` ranks, or None."""
    need = per_rank * local_ranks
    if free is None or free >= need:
        return None
    return (f"/dev/shm has {free // MIB} MiB free, short of the {math.ceil(need / MIB)} MiB async saves stage "
            f"({local_ranks} rank(s) on this node x {math.ceil(per_rank / MIB)} MiB)")


@dataclass
class _Kept:
    """One tensor's shared-memory copy, and what the staged state dict holds for it (the copy, or a
    DTensor over it)."""

    copy: torch.Tensor
    staged: torch.Tensor


class SharedMemoryStager:
    """Copies a CPU state dict into shared-memory tensors made at the first save and reused by every
    later one, where the checkpoint process (train.checkpoint_process) reads them in place.

    DCP's DefaultStager copies with ``UntypedStorage.copy_``, which holds the GIL throughout: beside
    the step, its copy of 192 MB kept the training thread waiting ~60 ms (bench/bench_checkpoint.py,
    1 rank). ``Tensor.copy_`` releases it. Each tensor is copied alone (a view copies its own
    elements, not its whole storage); a DTensor as its local shard, under a DTensor made once with
    the same mesh and placements. With ``beside``, ``stage`` returns a Future and the copy runs on a
    thread of its own, beside the training step, which must not change the state until it is done.

    Each tensor keeps a storage of its own: torch 2.14 crashes (SIGSEGV in ``_share_fd_cpu_``)
    pickling two DTensors over views of one storage in one message, so small tensors cannot share
    one block.
    """

    def __init__(self, beside: bool) -> None:
        self._kept: dict[tuple[Any, ...], _Kept] = {}
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-stage") if beside else None

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any] | Future[dict[str, Any]]:
        if self._thread is not None:
            return self._thread.submit(self._staged, state_dict, ())
        staged: dict[str, Any] = self._staged(state_dict, ())
        return staged

    @torch.no_grad()
    def _staged(self, tree: Any, path: tuple[Any, ...]) -> Any:
        """``tree`` with each tensor replaced by its copy, and the rest copied."""
        if isinstance(tree, torch.Tensor):
            return self._copied(tree, path)
        if isinstance(tree, dict):
            return {key: self._staged(value, (*path, key)) for key, value in tree.items()}
        if isinstance(tree, (list, tuple)):
            return type(tree)(self._staged(value, (*path, index)) for index, value in enumerate(tree))
        return copy.deepcopy(tree)

    def _copied(self, tensor: torch.Tensor, path: tuple[Any, ...]) -> torch.Tensor:
        local = local_shard(tensor)
        kept = self._kept.get(path)
        if kept is None or kept.copy.shape != local.shape or kept.copy.dtype != local.dtype:
            shared = torch.empty(local.shape, dtype=local.dtype).share_memory_()
            staged = (DTensor.from_local(shared, tensor.device_mesh, tensor.placements, run_check=False,
                                         shape=tensor.shape, stride=tensor.stride())
                      if isinstance(tensor, DTensor) else shared)
            kept = self._kept[path] = _Kept(shared, staged)
        kept.copy.copy_(local)
        return kept.staged

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        self._kept.clear()
