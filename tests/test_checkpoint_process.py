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
