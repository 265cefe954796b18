"""How checkpoint bytes reach storage: DCP's writers without torch.save's CRC-32, and a planner that caches its plan.

Both are picklable, module-level classes: an async save hands them to DCP's checkpoint process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

import torch
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from train.compat import FsspecWriter

# At most this many files a rank writes at once into a local folder (DCP's default is 1).
MAX_WRITE_THREADS = 4


def write_threads(environ: Mapping[str, str] = os.environ, cpus: int | None = None) -> int:
    """Files each rank writes at once: one per core it has to itself (the machine's cores over the
    node's ranks, torchrun's ``LOCAL_WORLD_SIZE``), read when a save starts. A write serializes with
    the GIL held and copies into the page cache, so a second thread only helps where a core is free
    for it: on 2 cores a lone rank saved 184 MB at 1.4-2 x the speed with 2 threads, while 2 ranks
    with 2 threads each were slower than with 1 (bench/bench_checkpoint.py)."""
    cores = cpus if cpus is not None else os.cpu_count() or 1
    return max(1, min(MAX_WRITE_THREADS, cores // max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))))


@contextlib.contextmanager
def crc32_off() -> Iterator[None]:
    """torch.save without the CRC-32 of each record, for this process, while the block runs.

    DCP writes every tensor with torch.save, whose zip records each carry a CRC-32 that torch.load
    never checks (tests/test_train_compat.py keeps that true): computing it was 40 % of a local
    save's time (bench/bench_checkpoint.py). Process-wide, which is safe here: nothing else in the
    training program calls torch.save while a checkpoint is written.
    """
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


class LocalWriter(FileSystemWriter):
    """A local folder: one file per rank and thread, each fsynced before the save returns."""

    def __init__(self, path: str, threads: int) -> None:
        super().__init__(path, sync_files=True, thread_count=threads)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        with crc32_off():
            return super().write_data(plan, planner)


class RemoteWriter(FsspecWriter):
    """Any fsspec URL (s3://...). No fsync: it fails on a non-local stream (pytorch#142396,
    pytorch#144752); an object store shows an object whole once its upload closes."""

    def __init__(self, url: str) -> None:
        super().__init__(url, sync_files=False)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        with crc32_off():
            return super().write_data(plan, planner)


def save_planner() -> DefaultSavePlanner:
    """DCP's planner with plan caching: from the second save of the same state layout on, ranks send
    no plans and rank 0 rebuilds no global plan or metadata (the layout never changes within a run)."""
    return DefaultSavePlanner(enable_plan_caching=True)
