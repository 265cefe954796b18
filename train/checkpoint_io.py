"""How checkpoint bytes reach storage and come back: DCP's writers without torch.save's CRC-32, a
planner that caches its plan, readers that read each file front to back without torch.load (a rank's
own files read ahead while a load plans), and files on a local disk written past the page cache
(train.direct_io).

The writers and the planner are picklable, module-level classes: an async save hands them to the
checkpoint process (train.checkpoint_process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import io
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import torch
from fsspec.core import url_to_fs
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from train.compat import FsspecReader, FsspecWriter, tensor_bytes_in_head, tensor_in_record
from train.direct_io import DirectFileSystem, writes_direct

# At most this many files a rank writes at once into a local folder (DCP's default is 1).
MAX_WRITE_THREADS = 4
# Files a rank uploads at once to an object store, whatever its cores: 184 MB from 2 ranks to moto
# went at 68-98 MB/s with 1, 98 with 2 and 168-188 with 4 (bench/bench_checkpoint.py --s3); smaller
# files also go up in one PUT each instead of s3fs's sequential 50 MiB parts.
REMOTE_WRITE_THREADS = 4
# What a remote read fetches at once: one GET per this many bytes of a file read front to back.
REMOTE_READ_AHEAD = 64 << 20
# Records from this size on are read straight into their tensors; below it, a copy costs less than
# the extra read of the record's first bytes.
DIRECT_READ_BYTES = 64 << 10
# What is read of such a record to find its tensor's bytes: torch.save puts them at 704 today.
RECORD_HEAD_BYTES = 4 << 10


def write_threads(environ: Mapping[str, str] = os.environ, cpus: int | None = None) -> int:
    """Files each rank writes at once: one per core it has to itself (the machine's cores over the
    node's ranks, torchrun's ``LOCAL_WORLD_SIZE``), read when a save starts. A write serializes with
    the GIL held and copies every byte once, so a second thread only helps where a core is free
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


# The errors that mean the storage is full.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def causes(err: BaseException | None) -> Iterator[BaseException]:
    """``err``, then what caused it (or was being handled when it was raised), and so on, each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def space_error(err: BaseException | None) -> OSError | None:
    """The OSError that says the storage is full in ``err`` or the chain of its causes, if any."""
    return next((e for e in causes(err) if isinstance(e, OSError) and e.errno in NO_SPACE_ERRNOS), None)


@contextlib.contextmanager
def space_errors_kept() -> Iterator[None]:
    """A full disk raised as the OSError that says so, not as what torch.save made of it.

    torch.save raises its own RuntimeError ("unexpected pos 704 vs 598") when a write fails, with
    the OSError only as its context; DCP's exchange of failures between ranks pickles exceptions,
    which drops that context, so no rank could tell the user the disk was full.
    """
    try:
        yield
    except Exception as err:
        full = space_error(err)
        if full is None or full is err:
            raise
        raise full from err


def largest_first(plan: SavePlan) -> SavePlan:
    """``plan`` with its tensors in order of their bytes, largest first, so a file ends with its
    small ones side by side.

    Every rank loads the small replicated items (AdamW's step counters, the train state), which
    DCP's dedup spread over the ranks' files. In plan order, the one-file-per-rank writer put them
    between the large shards: another rank then read 65 records of 1.5 kB scattered over 60 MB of a
    cold file, 40 ms of a 150 ms load of 192 MB on 2 ranks (phase timing); from S3, the
    read-ahead fetched most of the other rank's file for them. Side by side, they come in one read.
    DCP already orders a rank's files this way when it writes more than one; byte items (the train
    state) stay first in each file either way.
    """
    return dataclasses.replace(plan, items=sorted(plan.items, key=_stored_bytes, reverse=True))


def _stored_bytes(item: WriteItem) -> int:
    """The bytes of the chunk ``item`` writes (0 for a byte item): a shard's, not its whole tensor's."""
    if item.tensor_data is None:
        return 0
    return math.prod(item.tensor_data.chunk.sizes) * item.tensor_data.properties.dtype.itemsize


def all_written(plan: SavePlan, written: Future[list[WriteResult]]) -> Future[list[WriteResult]]:
    """``written`` where it holds a result for every item of ``plan``, else an error.

    DCP's writer drops a failure in any write thread but the caller's (threading.excepthook prints
    it) and returns what the others wrote: the save would go on to publish metadata for items no
    file holds, and we would commit a checkpoint that cannot load (pytorch#191391, open).
    """
    missing = len(plan.items) - len(written.wait())
    if missing:
        raise RuntimeError(f"checkpoint: {missing} of {len(plan.items)} items were not written: a write thread "
                           "failed (its traceback is in this rank's log)")
    return written


def checked_write(write: Callable[[SavePlan, SavePlanner], Future[list[WriteResult]]], plan: SavePlan,
                  planner: SavePlanner) -> Future[list[WriteResult]]:
    """Both writers' ``write_data``: DCP's ``write``, given the plan largest first, without
    torch.save's CRC-32s, a full disk raised as such, and every item's write checked."""
    with crc32_off(), space_errors_kept():
        return all_written(plan, write(largest_first(plan), planner))


class LocalWriter(FileSystemWriter):
    """A local folder: one file per rank and thread, each fsynced before the save returns; on a
    local disk's filesystem, written past the page cache (train.direct_io)."""

    def __init__(self, path: str, threads: int) -> None:
        direct = writes_direct(path)
        # DirectFile fsyncs each file as it closes, after its last bytes, which DCP's fsync would precede.
        super().__init__(path, sync_files=not direct, thread_count=threads)
        if direct:
            self.fs = DirectFileSystem()

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        return checked_write(super().write_data, plan, planner)


class RemoteWriter(FsspecWriter):
    """Any fsspec URL (s3://...), ``threads`` files uploading at once: an upload mostly waits on the
    network, and s3fs sends a file's parts one after another. No fsync: it fails on a non-local
    stream (pytorch#142396, pytorch#144752); an object store shows an object whole once its upload closes."""

    def __init__(self, url: str, threads: int) -> None:
        super().__init__(url, sync_files=False, thread_count=threads)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        return checked_write(super().write_data, plan, planner)


def save_planner() -> DefaultSavePlanner:
    """DCP's planner with plan caching: from the second save of the same state layout on, ranks send
    no plans and rank 0 rebuilds no global plan or metadata (the layout never changes within a run)."""
    return DefaultSavePlanner(enable_plan_caching=True)


class _RecordFile(Protocol):
    """A checkpoint file opened for reading: a local file, or fsspec's buffered remote file."""

    def seek(self, offset: int) -> int: ...

    def readinto(self, buffer: memoryview) -> int | None: ...

    def close(self) -> None: ...


class _StoredRecord(Protocol):
    """Where DCP's metadata says an item's record is (its storage_data entry)."""

    relative_path: str
    offset: int
    length: int


class _RecordsInFileOrder(FileSystemReader):
    """DCP's reader, reading a file at a time in the order it was written, each record decoded by
    train.compat.tensor_in_record instead of torch.load (which still reads any record it declines).

    DCP's own reads the items in plan order and torch.loads each: on 2 ranks, 184 MB loaded at
    0.5-0.6 of a raw read of the same bytes from a local disk, and at 0.38 of one GET from S3, where
    its jumps back and forth in a file fetched ranges again (bench/bench_checkpoint.py).

    A record of at least DIRECT_READ_BYTES whose whole tensor is the whole of a contiguous CPU
    tensor in the state is read straight into that tensor (_read_into_place); the rest go through one
    buffer per file being read, reused, the size of the largest of them. No other memory but the
    remote file's read-ahead.
    """

    def _open(self, relative_path: str) -> _RecordFile:
        raise NotImplementedError

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        if any(self.storage_data[item.storage_index].transform_descriptors for item in plan.items):
            return super().read_data(plan, planner)
        per_file: dict[str, list[ReadItem]] = {}
        for item in plan.items:
            per_file.setdefault(self.storage_data[item.storage_index].relative_path, []).append(item)
        # Files read at once, a thread each: as many as a rank writes. A lone rank on 2 cores loaded
        # its 192 MB, in 2 files, at 0.85-0.94 of a raw read with both at once and 0.69-0.75 one after
        # the other (bench/bench_checkpoint.py --ranks 1, runs alternated): a read waits on the disk
        # with the GIL released, and the second reader keeps the disk busy while the first decodes.
        # Two ranks on those cores read one file at a time each.
        threads = min(len(per_file), write_threads())
        if threads > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="checkpoint-read") as pool:
                for _ in pool.map(lambda path: self._read_file(path, per_file[path], planner), per_file):
                    pass  # each file's error, if any, raised here
        else:
            for relative_path, items in per_file.items():
                self._read_file(relative_path, items, planner)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def _read_file(self, relative_path: str, items: list[ReadItem], planner: LoadPlanner) -> None:
        """``items``, all stored in ``relative_path``, read front to back."""
        scratch, head = bytearray(), bytearray(RECORD_HEAD_BYTES)
        items.sort(key=lambda item: self.storage_data[item.storage_index].offset)
        with contextlib.closing(self._open(relative_path)) as file:
            for item in items:
                where = self.storage_data[item.storage_index]
                if where.length >= DIRECT_READ_BYTES and _read_into_place(file, where, item, planner, head):
                    continue
                if len(scratch) < where.length:
                    scratch = bytearray(where.length)
                record = memoryview(scratch)[:where.length]
                _read_at(file, where.offset, record, relative_path)
                _apply(item, record, planner, where)


def files_of_rank(folder: str, rank: int) -> list[str]:
    """The data files rank ``rank`` wrote into a local checkpoint folder (DCP's writer names them
    ``__<rank>_<n>.distcp``; tests/test_checkpoint_units.py keeps that true)."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), f"__{rank}_*.distcp")))


@contextlib.contextmanager
def read_ahead(files: Sequence[str]) -> Iterator[None]:
    """``files`` read into the page cache while the block runs, a thread each, then waited for; on an
    exception they are left to finish on their own (daemon threads, which hold up no exit).

    A load spends its first ~25 ms on the CPU (the state dict, DCP's metadata and its plan) before
    it reads a byte: reading the rank's own files meanwhile took a 2-rank load of 192 MB from 98-104
    to 82-87 ms, and a lone rank's from 93-100 to 73-79 ms (medians of 12-16 repeats, alternated in
    one process; on 2 ranks, a raw read of the same bytes took 60 ms). Reading .metadata first, or
    the files one after another, made no difference. posix_fadvise(WILLNEED) reads 8 MiB per call
    on this kernel, and a loop of calls or of reads in a thread bought nothing: such a thread needs
    the GIL back after each call, and the planning thread holds it.
    """
    threads = [threading.Thread(target=_into_page_cache, args=(path,), name="checkpoint-read-ahead", daemon=True)
               for path in files]
    for thread in threads:
        thread.start()
    yield
    for thread in threads:
        thread.join()


def _into_page_cache(path: str) -> None:
    """Read ``path`` through the page cache into /dev/null: one sendfile call, which holds no GIL and
    copies nothing into this process. Best effort: the load's own reads report what fails."""
    with contextlib.suppress(OSError), open(path, "rb", buffering=0) as file, \
            open(os.devnull, "wb", buffering=0) as sink:
        at, size = 0, os.fstat(file.fileno()).st_size
        while at < size:
            sent = os.sendfile(sink.fileno(), file.fileno(), at, size - at)
            if sent <= 0:
                return
            at += sent


class LocalReader(_RecordsInFileOrder):
    """A local folder, read through the page cache. Reads past it, as saves write (train.direct_io),
    were tried and dropped: with one 4 MiB read ahead they fed two ranks 96 MB each in 0.13-0.15 s
    where the kernel's read-ahead took 0.10 s on recycled pages (0.19-0.22 s on cold ones), and the
    load row of bench/bench_checkpoint.py came out at 0.48-0.68 against 0.61-0.70."""

    def _open(self, relative_path: str) -> _RecordFile:
        return open(os.path.join(self.path, relative_path), "rb", buffering=0)


class RemoteReader(_RecordsInFileOrder, FsspecReader):
    """Any fsspec URL (s3://...): each file read front to back in ranges of REMOTE_READ_AHEAD bytes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        # The filesystem FsspecReader made for the URL (fsspec caches instances), typed.
        self._files, _ = url_to_fs(url)

    def _open(self, relative_path: str) -> _RecordFile:
        stream: _RecordFile = self._files.open(f"{self.path}/{relative_path}", "rb", block_size=REMOTE_READ_AHEAD,
                                                cache_type="readahead")
        return stream


def _read_into_place(file: _RecordFile, where: _StoredRecord, item: ReadItem, planner: LoadPlanner,
                    head: bytearray) -> bool:
    """Read the record at ``where`` straight into the tensor ``item`` loads, when that tensor is
    contiguous on the CPU and the record's is all of it; False, having changed nothing, where not.

    This skips a copy of every large tensor out of the read buffer: 13 ms of a 150 ms load of 96 MB
    per rank, and the buffer itself. Only the record's first bytes are read to find where the
    tensor's bytes start (train.compat.tensor_bytes_in_head).
    """
    if item.type != LoadItemType.TENSOR or any(item.storage_offsets) or any(item.dest_offsets):
        return False
    target = planner.resolve_tensor(item).detach()
    if target.device.type != "cpu" or not target.is_contiguous() or tuple(item.lengths) != tuple(target.size()):
        return False
    first = memoryview(head)[:min(len(head), where.length)]
    _read_at(file, where.offset, first, where.relative_path)
    found = tensor_bytes_in_head(first)
    if (found is None or found.dtype != target.dtype or found.shape != tuple(target.size())
            or found.start + found.nbytes > where.length):
        return False
    _read_at(file, where.offset + found.start, _memory_of(target), where.relative_path)
    planner.commit_tensor(item, target)
    return True


def _read_at(file: _RecordFile, offset: int, buffer: memoryview, relative_path: str) -> None:
    """Fill ``buffer`` from ``offset`` of the file, which must hold that many bytes there."""
    file.seek(offset)
    if file.readinto(buffer) != buffer.nbytes:
        raise OSError(f"{relative_path}: shorter than the checkpoint's metadata says")


def _memory_of(tensor: torch.Tensor) -> memoryview:
    """A contiguous CPU tensor's bytes, writable in place."""
    # Any: numpy's stubs declare an array a buffer only from Python 3.12 on.
    array: Any = tensor.view(-1).view(torch.uint8).numpy()
    return memoryview(array)


def _apply(item: ReadItem, record: memoryview, planner: LoadPlanner, where: _StoredRecord) -> None:
    """One read item from its record's bytes into the state the planner loads."""
    if item.type == LoadItemType.BYTE_IO:
        planner.load_bytes(item, io.BytesIO(record))
        return
    tensor = tensor_in_record(record)
    if tensor is None:
        try:
            tensor = torch.load(io.BytesIO(record), map_location="cpu", weights_only=True)
        except Exception as err:
            # What torch.load says of a damaged record is about weights_only and trusted sources.
            raise ValueError(f"{item.storage_index.fqn}: its record in {where.relative_path} at byte {where.offset} "
                             f"({where.length} bytes) is not a tensor torch.load can read; the file is damaged "
                             "or was not written whole") from err
    tensor = _narrowed(tensor, item.storage_offsets, item.lengths)
    target = planner.resolve_tensor(item).detach()
    if target.size() != tensor.size():
        raise ValueError(f"checkpoint: {item.storage_index.fqn} holds {tuple(tensor.size())} where "
                         f"{tuple(target.size())} was asked for")
    # The copy is done before the next record reuses the buffer the tensor views.
    target.copy_(tensor)
    planner.commit_tensor(item, target)


def _narrowed(tensor: torch.Tensor, offsets: Sequence[int], lengths: Sequence[int]) -> torch.Tensor:
    """The part of a saved chunk a read item asks for (a load onto another sharding asks for parts)."""
    for dim, (offset, length) in enumerate(zip(offsets, lengths, strict=True)):
        if (offset, length) != (0, tensor.size(dim)):
            tensor = tensor.narrow(dim, offset, length)
    return tensor
