"""The training program's one compat module: the torch floor, and what torch offers no public way to do.

tests/test_train_compat.py checks each shape against the installed torch, so an upgrade that moves
one fails a unit test by name instead of a user's run.
"""

from __future__ import annotations

import re

import torch
from torch.distributed.checkpoint import StorageReader

# DCP's writer and reader for any fsspec URL: only in DCP's private module as of torch 2.14.
# train.checkpoint_io subclasses the writer.
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

__all__ = ["TORCH_FLOOR", "FsspecWriter", "fsspec_reader", "torch_floor_problem", "torch_version"]

# DCP's staging API (DefaultStager, StagingOptions, AsyncSaveResponse) arrived in torch 2.9, and one
# stager reused across saves crashed from 2.11 until pytorch#183424 (merged 2026-06, in 2.13.0).
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


def fsspec_reader(url: str) -> StorageReader:
    """DCP's reader for any fsspec URL (see FsspecWriter)."""
    reader: StorageReader = FsspecReader(url)
    return reader
