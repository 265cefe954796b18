"""The checkpoint process of async saves: handed the staged tensors once, it writes each save from shared memory."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.tensor import DTensor, Shard, init_device_mesh

from tests.checkpoint_runs import read_checkpoint
from tests.test_staging_room import staged_now
from train.checkpoint_process import CheckpointProcess
from train.staging_room import SharedMemoryStager


@pytest.fixture
def group() -> Iterator[dist.ProcessGroup]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        made = dist.new_group(backend="gloo")
        assert isinstance(made, dist.ProcessGroup)
        yield made
    finally:
        dist.destroy_process_group()


def test_the_process_is_handed_the_tensors_once_and_writes_each_save_from_shared_memory(
        group: dist.ProcessGroup, tmp_path: Path) -> None:
    stager, process = SharedMemoryStager(beside=False), CheckpointProcess()
    weights = torch.arange(6.0)
    state: dict[str, Any] = {"model": {"w": weights}, "train": {"step": 1}}
    process.start(group)
    try:
        process.save(staged_now(stager, state), FileSystemWriter(str(tmp_path / "one")), DefaultSavePlanner())
        weights.add_(10.0)
        state["train"]["step"] = 2
        process.save(staged_now(stager, state), FileSystemWriter(str(tmp_path / "two")), DefaultSavePlanner())
        assert process.handoffs == 1, "the second save sent indices, not tensors"
        state["model"]["w"] = torch.ones(3, dtype=torch.float64)
        process.save(staged_now(stager, state), FileSystemWriter(str(tmp_path / "three")), DefaultSavePlanner())
        assert process.handoffs == 2, "new staged tensors are handed over again"
    finally:
        process.close()
        stager.close()
    saved = [read_checkpoint(tmp_path / name, tmp_path / "scratch") for name in ("one", "two", "three")]
    assert torch.equal(saved[0]["model"]["w"], torch.arange(6.0)) and saved[0]["train"]["step"] == 1
    assert torch.equal(saved[1]["model"]["w"], torch.arange(6.0) + 10) and saved[1]["train"]["step"] == 2
    assert torch.equal(saved[2]["model"]["w"], torch.ones(3, dtype=torch.float64))


def test_new_tensors_over_memory_the_process_holds_go_as_views_of_it(group: dist.ProcessGroup, tmp_path: Path) -> None:
    """DCP's stager, which CUDA runs pinned, makes new tensors over the same memory at every save."""
    stager = DefaultStager(StagingOptions(use_pinned_memory=False, use_shared_memory=True, use_async_staging=False,
                                          use_non_blocking_copy=False))
    process = CheckpointProcess()
    weights, moments = torch.arange(6.0), torch.arange(8.0, dtype=torch.float64)
    padding = torch.zeros(1 << 16)  # larger than everything else the save sends
    sharded = DTensor.from_local(torch.arange(4.0).reshape(2, 2), init_device_mesh("cpu", (1,)), [Shard(0)],
                                 run_check=False)
    # A view is staged over a copy of its whole storage, at its offset; a DTensor as its local shard.
    state: dict[str, Any] = {"model": {"w": weights, "padding": padding, "sharded": sharded},
                             "optimizer": {"m": moments[2:6]}}
    process.start(group)
    try:
        for name in ("one", "two"):
            staged = stager.stage(state)
            assert isinstance(staged, dict)
            process.save(staged, FileSystemWriter(str(tmp_path / name)), DefaultSavePlanner())
            weights.mul_(-1.0)
            moments.add_(100.0)
            sharded.to_local().add_(1.0)
        assert process.handoffs == 1, "the second save sent views of the memory the process holds"
        assert process.last_sent < padding.nbytes, "no tensor's elements were sent"
    finally:
        process.close()
        stager.close()
    saved = [read_checkpoint(tmp_path / name, tmp_path / "scratch") for name in ("one", "two")]
    assert torch.equal(saved[0]["model"]["w"], torch.arange(6.0))
    assert torch.equal(saved[1]["model"]["w"], -torch.arange(6.0))
    assert torch.equal(saved[0]["optimizer"]["m"], torch.arange(2.0, 6.0, dtype=torch.float64))
    assert torch.equal(saved[1]["optimizer"]["m"], torch.arange(102.0, 106.0, dtype=torch.float64))
    assert torch.equal(saved[0]["model"]["sharded"], torch.arange(4.0).reshape(2, 2))
    assert torch.equal(saved[1]["model"]["sharded"], torch.arange(4.0).reshape(2, 2) + 1)


def test_a_failed_save_raises_in_the_training_process_and_the_next_one_writes(
        group: dist.ProcessGroup, tmp_path: Path) -> None:
    stager, process = SharedMemoryStager(beside=False), CheckpointProcess()
    state = {"model": {"w": torch.arange(4.0)}}
    (tmp_path / "taken").write_text("a file where the checkpoint folder should go")
    process.start(group)
    try:
        with pytest.raises(BaseException, match="taken"):
            process.save(staged_now(stager, state), FileSystemWriter(str(tmp_path / "taken")), DefaultSavePlanner())
        process.save(staged_now(stager, state), FileSystemWriter(str(tmp_path / "ok")), DefaultSavePlanner())
    finally:
        process.close()
        stager.close()
    assert torch.equal(read_checkpoint(tmp_path / "ok", tmp_path / "scratch")["model"]["w"], torch.arange(4.0))
