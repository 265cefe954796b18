"""The training program's one compat module: the torch floor, and what torch offers no public way to do.

tests/test_train_compat.py checks each shape against the installed torch, so an upgrade that moves
one fails a unit test by name instead of a user's run.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
import struct
from dataclasses import dataclass
from typing import Any

import torch

# DCP's writer and reader for any fsspec URL: only in DCP's private module as of torch 2.14.
# train.checkpoint_io subclasses both.
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

__all__ = ["TORCH_FLOOR", "FsspecReader", "FsspecWriter", "TensorBytes", "tensor_bytes_in_head", "tensor_in_record",
           "torch_floor_problem", "torch_version"]

# DCP's staging API (DefaultStager, StagingOptions), which async saves on CUDA use, arrived in torch
# 2.9, and one stager reused across saves crashed from 2.11 until pytorch#183424 (merged 2026-06, in
# 2.13.0).
# pyproject.toml declares the same floor (tests/test_train_compat.py keeps them equal).
TORCH_FLOOR = (2, 13)


def torch_version(text: str) -> tuple[int, int]:
    """``2.13.0+cpu`` -> (2, 13)."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a torch version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def torch_floor_problem(version: str = torch.__version__) -> str | None:
    """Why this torch cannot run the program, or None when it is at or above the floor."""
    if torch_version(version) >= TORCH_FLOOR:
        return None
    floor = ".".join(map(str, TORCH_FLOOR))
    return f"{version} is older than {floor}, the oldest this program supports; use torch>={floor}"


# -- torch.save's records, read without torch.load ----------------------------------------------
#
# DCP writes every tensor as one torch.save record: a stored (uncompressed) zip whose data.pkl
# names the storage's dtype, offset, size and stride, and whose data/0 holds the bytes (the layout
# of torch's serialization notes). torch.load spends 0.3-0.5 ms on each (its weights-only unpickler
# is Python), most of a local load's time for a model's few hundred tensors. tensor_in_record reads
# that one shape; anything else is None, and torch.load reads it.

_ZIP_END = struct.Struct("<4s4H2LH")  # end of central directory: 22 bytes, no comment
_ZIP_ENTRY = struct.Struct("<4s6H3L5H2L")  # central directory header: 46 bytes, then the name
_ZIP_LOCAL = struct.Struct("<4s5H3L2H")  # local file header: 30 bytes, then the name and extra field
_ZIP64 = 0xFFFFFFFF
# torch.save's pickled storage classes (torch/storage.py) and the dtypes they hold.
_STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                   "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                   "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64,
                   "ComplexDoubleStorage": torch.complex128}


class _Storage(tuple):
    """(dtype, key, numel) of data.pkl's one persistent storage."""


def _rebuilt(storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any) -> tuple:
    return storage, offset, size, stride


class _RecordUnpickler(pickle.Unpickler):
    """data.pkl of a plain tensor and nothing else: any other global stops it (then torch.load reads)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuilt
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(str(pid))
        return _Storage((dtype, key, numel))


def _zip_entries(record: memoryview) -> dict[str, tuple[int, int]] | None:
    """Each entry's name after its folder, with where its bytes start in ``record`` and how many."""
    if len(record) < _ZIP_END.size:
        return None
    magic, _, _, _, count, _, start, _ = _ZIP_END.unpack_from(record, len(record) - _ZIP_END.size)
    if magic != b"PK\x05\x06" or start == _ZIP64:
        return None
    entries = {}
    for _ in range(count):
        (magic, *_, method, _, _, _, size, _, name_len, extra_len, comment_len, _, _, _,
         local) = _ZIP_ENTRY.unpack_from(record, start)
        if magic != b"PK\x01\x02" or method != 0 or _ZIP64 in (size, local):
            return None
        name = bytes(record[start + _ZIP_ENTRY.size:start + _ZIP_ENTRY.size + name_len]).decode()
        *_, local_name, local_extra = _ZIP_LOCAL.unpack_from(record, local)
        entries[name.partition("/")[2]] = (local + _ZIP_LOCAL.size + local_name + local_extra, size)
        start += _ZIP_ENTRY.size + name_len + extra_len + comment_len
    return entries


def tensor_in_record(record: memoryview) -> torch.Tensor | None:
    """The tensor one torch.save record in ``record`` (writable) holds, as a view of its bytes, or
    None where the record is not the plain little-endian tensor DCP writes."""
    try:
        entries = _zip_entries(record)
    except (struct.error, UnicodeDecodeError):
        return None
    if entries is None or "data.pkl" not in entries:
        return None
    where, size = entries.get("byteorder", (0, 0))
    if size and bytes(record[where:where + size]) != b"little":
        return None
    where, size = entries["data.pkl"]
    try:
        storage, offset, shape, stride = _RecordUnpickler(io.BytesIO(record[where:where + size])).load()
    except (pickle.UnpicklingError, ValueError, TypeError):
        return None
    if not isinstance(storage, _Storage):
        return None
    dtype, key, numel = storage
    where, size = entries.get(f"data/{key}", (0, -1))
    if size != numel * dtype.itemsize:
        return None
    flat = torch.frombuffer(record, dtype=dtype, count=numel, offset=where) if numel else torch.empty(0, dtype=dtype)
    return flat.as_strided(shape, stride, offset)


@dataclass(frozen=True)
class TensorBytes:
    """A contiguous tensor's bytes in its torch.save record: from ``start``, ``shape`` of ``dtype``."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def tensor_bytes_in_head(head: memoryview) -> TensorBytes | None:
    """Where the bytes of the contiguous tensor a torch.save record holds start, from the record's
    first bytes alone (``head``), so a reader can read them straight into their tensor; None where
    ``head`` does not show that (then read the whole record).

    The zip directory that tensor_in_record reads is at the record's end. Its local headers carry
    no sizes (torch's writer streams each entry and puts its sizes after it), so this unpickles
    data.pkl, which ends itself, then finds its storage's entry by the local header's signature and
    name. The entries before it are a few bytes each: the storage's bytes start in the first kilobyte.
    """
    try:
        magic, _, _, method, *_, name_len, extra_len = _ZIP_LOCAL.unpack_from(head, 0)
    except struct.error:
        return None
    first = _ZIP_LOCAL.size + name_len + extra_len
    name = bytes(head[_ZIP_LOCAL.size:_ZIP_LOCAL.size + name_len])
    if magic != b"PK\x03\x04" or method != 0 or not name.endswith(b"/data.pkl"):
        return None
    pickled = io.BytesIO(head[first:])
    try:
        storage, offset, shape, stride = _RecordUnpickler(pickled).load()
    except (pickle.UnpicklingError, ValueError, TypeError, EOFError):
        return None
    if not isinstance(storage, _Storage):
        return None
    dtype, key, numel = storage
    if offset != 0 or numel != math.prod(shape) or tuple(stride) != _contiguous_strides(shape):
        return None
    at = _storage_start(bytes(head), first + pickled.tell(), key)
    return None if at is None else TensorBytes(dtype, tuple(shape), at)


def _storage_start(head: bytes, start: int, key: str) -> int | None:
    """Where entry data/<key>'s bytes start, from the local headers in ``head`` after ``start``; None
    where it is not there, not stored, or follows a byteorder entry other than little-endian."""
    wanted = f"data/{key}".encode()
    at = head.find(b"PK\x03\x04", start)
    while 0 <= at <= len(head) - _ZIP_LOCAL.size:
        _, _, _, method, _, _, _, _, _, name_len, extra_len = _ZIP_LOCAL.unpack_from(head, at)
        name_at = at + _ZIP_LOCAL.size
        data = name_at + name_len + extra_len
        name = head[name_at:name_at + name_len].partition(b"/")[2]
        if name == b"byteorder" and head[data:data + 6] != b"little":
            return None
        if name == wanted:
            return data if method == 0 else None
        at = head.find(b"PK\x03\x04", at + 1)
    return None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))
