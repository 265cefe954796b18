"""A checkpoint process per rank for async saves: handed the staged tensors once, then each save's small rest."""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import pickle
import socket
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from train.staging_room import local_shard, tensor_leaves

# What the checkpoint processes' own process group finds its peers through, under rank 0's store.
STORE_PREFIX = "gangrun-checkpoint-process"


class _ByIndex(pickle.Pickler):
    """Pickles every tensor the checkpoint process already holds as where it holds it: a tensor it was
    handed as its index, any other CPU tensor over the memory of one it was handed as a view of that."""

    def __init__(self, file: io.BytesIO, by_object: dict[int, int], by_storage: dict[int, int]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.by_object, self.by_storage = by_object, by_storage

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        if not isinstance(obj, torch.Tensor):
            return None
        index = self.by_object.get(id(obj))
        if index is not None:
            return ("held", index)
        # A DTensor pickles its mesh and placements, then its local tensor, which lands here.
        if type(obj) is torch.Tensor and obj.device.type == "cpu":
            index = self.by_storage.get(obj.untyped_storage().data_ptr())
            if index is not None:
                return ("view", index, obj.dtype, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return None


class _FromIndex(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, held: list[torch.Tensor]) -> None:
        super().__init__(file)
        self.held = held

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if pid[0] == "held":
            return self.held[pid[1]]
        _, index, dtype, offset, size, stride = pid
        return torch.empty(0, dtype=dtype).set_(local_shard(self.held[index]).untyped_storage(), offset, size, stride)


class CheckpointProcess:
    """This rank's checkpoint process, started at the first save, and the way to it.

    DCP's process-based async save pickles the whole staged state to its process at every save,
    each tensor's shared memory as a file descriptor that the process fetches from a
    multiprocessing thread in the training process, which holds the GIL for each: ~270 of them per
    save of the bench's state, ~100 ms of fetching. A stager's memory is the same from save to save,
    and shared: this process is handed the staged tensors once, and each save after sends the state
    with every tensor it holds as an index (ours on the CPU keeps the same tensors, train.staging_room)
    or as a view of the memory of one it holds (DCP's pinned stager on CUDA makes new tensors over
    the memory it keeps). New memory is handed over again. A lone rank's async save of 192 MB then
    blocked training 0.012-0.014 s instead of 0.050-0.059 s, and 2 ranks' on 2 cores 0.12 s instead
    of 0.18-0.22 s (bench/bench_checkpoint.py).

    The processes of all ranks form a gloo process group of their own (through a store rank 0's
    training process serves), in which DCP plans and commits each save as in a blocking one. Call
    ``start`` on every rank at once, from a thread that blocks the signals the process must not take
    (it inherits the mask), then ``save`` from that thread, one save at a time.
    """

    def __init__(self) -> None:
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._store: dist.TCPStore | None = None
        # The tensors the process holds, kept alive here so that their ids, and the addresses of
        # their memory, stay theirs; where each is, by id and by the address of its memory.
        self._held: list[torch.Tensor] = []
        self._by_object: dict[int, int] = {}
        self._by_storage: dict[int, int] = {}
        # How many times the process was handed tensors: once, unless the staged memory changes.
        self.handoffs = 0
        # The bytes the last save sent besides tensors handed over: no tensor's elements.
        self.last_sent = 0

    def start(self, group: dist.ProcessGroup) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        # torchrun's MASTER_ADDR is the node of rank 0, whose training process serves the store.
        host = os.environ.get("MASTER_ADDR") or socket.getfqdn()
        address: list[Any] = [None]
        if rank == 0:
            self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False)
            address = [(host, self._store.port)]
        dist.broadcast_object_list(address, src=0, group=group)
        ours, theirs = multiprocessing.get_context("spawn").Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(theirs, address[0], rank, world), name=f"checkpoint-rank{rank}", daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self._answer()

    def save(self, staged: dict[str, Any], writer: Any, planner: Any) -> None:
        """Write ``staged`` with DCP in the checkpoint process; returns once every rank's is written."""
        assert self._conn is not None, "start comes first"
        leaves = tensor_leaves(staged)
        new = [leaf for leaf in leaves if id(leaf) not in self._by_object]
        if any(local_shard(leaf).untyped_storage().data_ptr() not in self._by_storage for leaf in new):
            self._held = leaves
            self._by_object = {id(leaf): i for i, leaf in enumerate(leaves)}
            self._by_storage = {}
            for i, leaf in enumerate(leaves):
                self._by_storage.setdefault(local_shard(leaf).untyped_storage().data_ptr(), i)
            self._conn.send(("tensors", leaves))
            self.handoffs += 1
        buffer = io.BytesIO()
        _ByIndex(buffer, self._by_object, self._by_storage).dump((staged, writer, planner))
        self.last_sent = buffer.tell()
        self._conn.send(("save", buffer.getvalue()))
        self._answer()

    def _answer(self) -> None:
        assert self._conn is not None and self._process is not None
        try:
            kind, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"checkpoint: the checkpoint process exited ({self._process.exitcode}) "
                               "before it answered") from None
        if kind == "error":
            raise payload

    def close(self) -> None:
        """Stop the process after the save in flight, if any, is answered."""
        if self._conn is not None and self._process is not None:
            with contextlib.suppress(OSError):  # the process is gone already
                self._conn.send(("stop", None))
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()
            self._conn.close()
        self._process = self._conn = None
        self._held, self._by_object, self._by_storage, self._store = [], {}, {}, None

    def abandon(self) -> None:
        """On an exception: end the process without waiting for a save."""
        if self._process is not None and self._process.is_alive():
            self._process.terminate()


def _serve(conn: Connection, address: tuple[str, int], rank: int, world: int) -> None:
    """The checkpoint process: join the others' process group, then write each save it is sent."""
    try:
        store = dist.PrefixStore(STORE_PREFIX, dist.TCPStore(address[0], address[1], is_master=False))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    except Exception as err:  # every failure goes back to the training process
        conn.send(("error", err))
        return
    conn.send(("ready", None))
    tensors: list[torch.Tensor] = []
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:  # the training process is gone
            return
        if kind == "stop":
            dist.destroy_process_group()
            return
        if kind == "tensors":
            tensors = payload
            continue
        try:
            staged, writer, planner = _FromIndex(io.BytesIO(payload), tensors).load()
            dcp.save(staged, storage_writer=writer, planner=planner)
        except BaseException as err:  # CheckpointException is a BaseException
            conn.send(("error", err))
            continue
        conn.send(("saved", None))
