"""Where checkpoints live: step folders under any fsspec URL, the commit manifest, listing and pruning.

A checkpoint is the folder ``step-<N:08d>/`` that DCP writes (data files, then ``.metadata`` last)
plus ``commit.json``, which rank 0 writes only after every rank's data and the metadata are
stored. A folder without both is incomplete — a save that was killed — and is never loaded.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem
from torch.distributed.checkpoint import StorageReader, StorageWriter

from train.checkpoint_io import (
    REMOTE_WRITE_THREADS,
    LocalReader,
    LocalWriter,
    RemoteReader,
    RemoteWriter,
    write_threads,
)

MANIFEST = "commit.json"
METADATA = ".metadata"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class Listing:
    """Step folders found under the checkpoint directory, newest first."""

    committed: list[int]
    incomplete: list[int]


class CheckpointStore:
    """One checkpoint directory, local or remote. Local paths get real files and fsync.

    URLs are parsed here because ``FileSystemWriter("file:///x")`` writes into a folder literally
    named ``file:``; remote URLs go through fsspec with ``sync_files=False`` since fsync on a
    non-local stream fails (pytorch#142396, pytorch#144752).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = root.rstrip("/")

    def path(self, step: int) -> str:
        return f"{self.root}/{step_dir_name(step)}"

    def display(self, path: str) -> str:
        """A path as the user would write it: a URL for remote stores."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def writer(self, path: str, background: bool = False) -> StorageWriter:
        """``background``: a save behind training writes one file at a time, leaving the cores to the
        step; a save training waits for writes with a thread per core the rank has to itself, or for
        REMOTE_WRITE_THREADS uploads at once."""
        if self.local:
            return LocalWriter(path, 1 if background else write_threads())
        return RemoteWriter(self.fs.unstrip_protocol(path), 1 if background else REMOTE_WRITE_THREADS)

    def reader(self, path: str) -> StorageReader:
        return LocalReader(path) if self.local else RemoteReader(self.fs.unstrip_protocol(path))

    def is_committed(self, path: str) -> bool:
        return self.fs.exists(f"{path}/{METADATA}") and self.fs.exists(f"{path}/{MANIFEST}")

    def read_manifest(self, path: str) -> dict:
        with self.fs.open(f"{path}/{MANIFEST}", "r") as f:
            return json.load(f)

    def list_steps(self) -> Listing:
        # s3fs caches listings; a store that just wrote must see its own new folders.
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(self.root):
            return Listing([], [])
        steps = []
        for entry in self.fs.ls(self.root, detail=False):
            match = _STEP_DIR.match(entry.rstrip("/").rsplit("/", 1)[-1])
            if match:
                steps.append(int(match.group(1)))
        committed: list[int] = []
        incomplete: list[int] = []
        for step in sorted(steps, reverse=True):
            (committed if self.is_committed(self.path(step)) else incomplete).append(step)
        return Listing(committed, incomplete)

    def commit(self, path: str, manifest: dict) -> None:
        """Write the manifest atomically: the checkpoint exists from this moment on, whole."""
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        target = f"{path}/{MANIFEST}"
        if not self.local:
            # One PUT: an object store never shows a partly written object.
            self.fs.pipe_file(target, data)
            return
        fd, tmp = tempfile.mkstemp(dir=path, prefix=f".{MANIFEST}.")
        try:
            with os.fdopen(fd, "wb") as f:
                # mkstemp makes the file private; a manifest is as readable as the data beside it.
                os.fchmod(f.fileno(), 0o644)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        _fsync_folder(path)

    def uncommit(self, path: str) -> bool:
        """Make a committed step folder incomplete before a save writes into it again, and say
        whether it was committed: its files are about to be replaced one by one, and a save that
        dies midway must not leave a mix of two saves under the old commit."""
        target = f"{path}/{MANIFEST}"
        if not self.fs.exists(target):
            return False
        self.fs.rm(target)
        if self.local:
            # The commit is gone for good before the first file is overwritten.
            _fsync_folder(path)
        return True

    def prune(self, keep: int, newest: int) -> list[int]:
        """Delete committed folders beyond the newest ``keep`` and incomplete ones older than ``newest``.

        Incomplete folders newer than the newest commit are left alone: a save may be writing them.
        """
        listing = self.list_steps()
        doomed = [s for s in listing.incomplete if s < newest]
        if keep > 0:
            doomed += listing.committed[keep:]
        for step in doomed:
            self.fs.rm(self.path(step), recursive=True)
        return sorted(doomed)


def _fsync_folder(path: str) -> None:
    """Make the folder's entries (a file renamed in, or removed) survive a crash."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
