"""What async saves stage: copies in shared memory that hold the state of the moment and are reused by every save."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from multiprocessing.reduction import ForkingPickler
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, init_device_mesh

from train.staging_room import SharedMemoryStager


def staged_now(stager: SharedMemoryStager, state: dict) -> dict:
    staged = stager.stage(state)
    return staged.result() if isinstance(staged, Future) else staged


@pytest.mark.parametrize("beside", [False, True])
def test_staged_copies_hold_the_state_of_the_moment_in_shared_memory_reused_by_every_save(beside: bool) -> None:
    stager = SharedMemoryStager(beside)
    weights = torch.arange(12.0).reshape(3, 4)
    state: dict[str, Any] = {"model": {"w": weights, "row": weights[1]},
                             "optimizer": [torch.tensor(3), {"lr": 0.1}], "train": {"step": 7}}
    first = stager.stage(state)
    assert isinstance(first, Future) == beside
    staged = first.result() if isinstance(first, Future) else first
    weights.add_(100.0)
    state["train"]["step"] = 8
    assert torch.equal(staged["model"]["w"], torch.arange(12.0).reshape(3, 4))
    assert staged["train"] == {"step": 7} and staged["optimizer"][1] == {"lr": 0.1}
    assert all(t.is_shared() for t in (staged["model"]["w"], staged["model"]["row"], staged["optimizer"][0]))
    # A view is copied as its own elements, not its whole storage.
    assert staged["model"]["row"].untyped_storage().nbytes() == 4 * 4

    again = staged_now(stager, state)
    assert again["model"]["w"] is staged["model"]["w"], "the copies are reused, not allocated again"
    assert torch.equal(again["model"]["w"], weights) and torch.equal(again["model"]["row"], weights[1])
    assert again["train"] == {"step": 8}

    state["model"]["w"] = torch.zeros(2, 2, dtype=torch.float64)
    reshaped = staged_now(stager, state)
    assert reshaped["model"]["w"].dtype == torch.float64 and torch.equal(reshaped["model"]["w"], torch.zeros(2, 2))
    stager.close()


@pytest.fixture
def world_of_one() -> Iterator[None]:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_a_dtensor_is_staged_as_its_shard_under_the_same_mesh_and_placements_and_pickles(world_of_one: None) -> None:
    mesh = init_device_mesh("cpu", (1,))
    sharded = DTensor.from_local(torch.arange(8.0).reshape(4, 2), mesh, [Shard(0)], run_check=False)
    stager = SharedMemoryStager(beside=False)
    staged = staged_now(stager, {"model": {"w": sharded}})["model"]["w"]
    sharded.to_local().zero_()
    assert isinstance(staged, DTensor)
    assert staged.placements == sharded.placements and staged.device_mesh == sharded.device_mesh
    assert staged.shape == sharded.shape and staged.to_local().is_shared()
    assert torch.equal(staged.to_local(), torch.arange(8.0).reshape(4, 2))
    # How the checkpoint process receives it (train.checkpoint_process).
    received = ForkingPickler.loads(ForkingPickler.dumps({"w": staged}))["w"]
    assert torch.equal(received.to_local(), torch.arange(8.0).reshape(4, 2))
    assert staged_now(stager, {"model": {"w": sharded}})["model"]["w"] is staged
    stager.close()
