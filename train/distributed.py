"""Process group from the torchrun environment (or a world of one), device choice, rank helpers."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from train.contract import PG_TIMEOUT_ENV

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Where this process stands: its ranks, the world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def pick_device(choice: str, local_rank: int) -> torch.device:
    """``auto`` takes this rank's GPU when CUDA works, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    # NCCL for GPU tensors; gloo is the one CPU backend every build has.
    return "nccl" if device.type == "cuda" else "gloo"


def restart_isolated_store(world_size: int, timeout: timedelta) -> dist.Store | None:
    """On one node under torchrun, the agent's store with a prefix per restart; else None (the default).

    torchrun (2.14, static and c10d rendezvous alike) hands every restarted worker group the same
    agent store, where the previous attempt's gloo addresses still sit: a restarted rank can read its
    dead peer's address and fail with "connectFullMesh ... Connection refused", or hang for the
    process-group timeout if that port was taken since (pytorch#135712). All workers on one node
    share TORCHELASTIC_RESTART_COUNT, so it names the attempt safely; across nodes the counts can
    differ (the same issue), so multi-node jobs keep torch's behaviour.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return None
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                is_master=False, timeout=timeout)
    return dist.PrefixStore(f"gangrun/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)


def pg_timeout() -> timedelta:
    """The launcher's process-group timeout (``--pg-timeout``), else torch's default."""
    seconds = os.environ.get(PG_TIMEOUT_ENV)
    return timedelta(seconds=int(seconds)) if seconds else default_pg_timeout


def init_world(device_choice: str) -> World:
    """Join the process group torchrun describes; with no torchrun variables, a world of one."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_choice, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():
        device_id = device if device.type == "cuda" else None
        timeout = pg_timeout()
        store = restart_isolated_store(world_size, timeout)
        if store is None:
            dist.init_process_group(backend_for(device), device_id=device_id, timeout=timeout)
        else:
            dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=world_size,
                                    device_id=device_id, timeout=timeout)
    return World(rank, local_rank, world_size, device)


def close_world() -> None:
    """Leave the process group, once nothing that wraps the model is referenced any more.

    Gloo's process group joins its worker threads when it is freed, and a worker thread that is
    dropping a finished broadcast needs the GIL to free the broadcast's tensors. Freed with the GIL
    held, the group and its thread wait on each other forever: the rank hangs at exit instead of
    exiting 0 (pytorch#56297; seen with 4 ranks in two containers). DDP's reducer and torch's group
    registry both free it with the GIL held, so neither may hold the last reference: the reducer is
    collected first, and the last reference is our own Python one, whose destructor releases the GIL.
    """
    if not dist.is_initialized():
        return
    gc.collect()
    world_group = dist.group.WORLD
    dist.destroy_process_group()
    del world_group


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    """Sum a few floats over all ranks (metrics, counts); a no-op in a world of one."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_floats(value: float, world: World) -> list[float]:
    """One float from every rank, in rank order; ``[value]`` in a world of one."""
    if not dist.is_initialized():
        return [value]
    gathered = [torch.zeros((), dtype=torch.float64, device=world.device) for _ in range(world.world_size)]
    dist.all_gather(gathered, torch.tensor(value, dtype=torch.float64, device=world.device))
    return [t.item() for t in gathered]


def all_gather_objects(value: T, world: World) -> list[T]:
    """A small picklable value from every rank, in rank order (once per run: it pickles)."""
    if not dist.is_initialized():
        return [value]
    gathered: list[Any] = [None] * world.world_size
    dist.all_gather_object(gathered, value)
    return gathered
