"""Local checkpoint files written past the page cache (O_DIRECT), through aligned buffers reused
from one save to the next.

A buffered write copies every byte into page-cache pages the kernel allocates for the new file, and
a checkpoint always writes new files. Where those pages are memory not touched lately, allocating
them is what costs: on the 2-core Firecracker VM of bench/bench_checkpoint.py, writing 96 MB into a
new file took 0.56-1.2 s of CPU, while overwriting a file just written (whose freed pages the kernel
hands straight back) took 35-42 ms; likely the balloon's free page reporting, after which the host
backs each page again at its next touch. Through O_DIRECT the same 96 MB took 20 ms of CPU and
80-98 ms: one copy into a buffer this process keeps, then the disk reads it. Two ranks saving 3 s
apart took 0.52 s of wall time and 0.42 s of CPU per file buffered, 0.16 s and 0.02 s direct
(bench/bench_page_cache.py). On any node, a checkpoint's pages in the page cache are also memory
taken from training until they are evicted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import mmap
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from torch.distributed.checkpoint.filesystem import FileSystem

if TYPE_CHECKING:
    from typing_extensions import Buffer

# What one write hands the disk. Two ranks at once each wrote 96 MB in 2-16 MiB chunks at the
# same speed here, and with 2-4 chunks in flight instead of 1 no faster; each open file holds two
# such buffers, kept for the life of the process.
CHUNK_BYTES = 4 << 20
# Writes smaller than this are gathered before they reach DirectFile.
SMALL_WRITES_BYTES = 64 << 10
# O_DIRECT wants a write's memory, file offset and length aligned to the device's logical block:
# 512 bytes or 4 KiB on today's disks; a page covers both.
ALIGN = mmap.PAGESIZE
# 0 where the platform has no O_DIRECT (macOS): files then go through the page cache.
O_DIRECT = getattr(os, "O_DIRECT", 0)

# Where O_DIRECT is plain: a local block device's filesystem. On network and parallel filesystems
# (NFS, Lustre, GPFS, FUSE), where checkpoints of multi-node runs often live, it changes how the
# client caches, batches and pipelines writes, each in its own way; on tmpfs and overlayfs it buys
# nothing. Those keep DCP's buffered writes.
LOCAL_BLOCK_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})

_idle_buffers: list[mmap.mmap] = []
_idle_lock = threading.Lock()


def _take_buffer() -> mmap.mmap:
    """A page-aligned CHUNK_BYTES buffer: one a finished file gave back, touched and so cheap, else a new one."""
    with _idle_lock:
        if _idle_buffers:
            return _idle_buffers.pop()
    return mmap.mmap(-1, CHUNK_BYTES)


def _give_back(buffer: mmap.mmap) -> None:
    with _idle_lock:
        _idle_buffers.append(buffer)


def filesystem_type(path: str, mountinfo: str) -> str | None:
    """The type of the filesystem ``path`` (absolute, symlinks resolved) is on, from the text of
    /proc/self/mountinfo: the last-mounted of the deepest mount points above it."""
    deepest, kind = "", None
    for line in mountinfo.splitlines():
        fields, dash, after = line.partition(" - ")
        mount_fields, after_fields = fields.split(), after.split()
        if not dash or len(mount_fields) < 5 or not after_fields:
            continue
        point = _unescaped(mount_fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(deepest):
            deepest, kind = point, after_fields[0]
    return kind


def _unescaped(field: str) -> str:
    """A mountinfo path field with its octal escapes (``\\040`` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def writes_direct(folder: str) -> bool:
    """Whether new files in ``folder`` (or, where it does not exist yet, the nearest folder above it
    that does) are written past the page cache: on LOCAL_BLOCK_FILESYSTEMS, where O_DIRECT exists."""
    if not O_DIRECT:
        return False
    path = os.path.realpath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        with open("/proc/self/mountinfo") as mounts:
            mountinfo = mounts.read()
    except OSError:
        return False
    return filesystem_type(path, mountinfo) in LOCAL_BLOCK_FILESYSTEMS


def _open_direct(path: str) -> tuple[int, bool]:
    """A new file at ``path`` for writing, with O_DIRECT where its filesystem takes it; whether it did."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT, 0o644), True
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


def _stop_direct(fd: int) -> None:
    """The rest of ``fd``'s writes through the page cache: a filesystem may take O_DIRECT at open and
    refuse a write it cannot align (EINVAL)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)


class DirectFile(io.RawIOBase):
    """A file written front to back in CHUNK_BYTES writes at aligned offsets, each by a thread of its
    own while the next chunk fills a second buffer, so the copy and the disk overlap; the last,
    partial chunk is written padded to ALIGN and the file cut back to its length when it closes,
    then fsynced.

    ``flush`` writes nothing: torch.save flushes after every record, and writing the partial chunk
    each time would write most bytes many times over. The file is whole only once ``close`` returns.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self._fd, self.direct = _open_direct(path)
        self._buffers = (_take_buffer(), _take_buffer())
        self._views = tuple(memoryview(buffer) for buffer in self._buffers)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-write")
        self._sending: Future[None] | None = None
        self._filling = 0  # which buffer fills; it starts at file offset _stored
        self._filled = 0
        self._stored = 0

    def write(self, data: Buffer, /) -> int:
        source = memoryview(data).cast("B")
        taken = 0
        while taken < source.nbytes:
            n = min(CHUNK_BYTES - self._filled, source.nbytes - taken)
            self._views[self._filling][self._filled:self._filled + n] = source[taken:taken + n]
            self._filled += n
            taken += n
            if self._filled == CHUNK_BYTES:
                self._send(CHUNK_BYTES)
        return taken

    def tell(self) -> int:
        return self._stored + self._filled

    def flush(self) -> None:
        """Nothing: see the class."""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Write what the buffers hold, cut the file to its length and fsync it; the descriptor is
        closed and the buffers given back even where that fails."""
        if self.closed:
            return
        try:
            length = self.tell()
            if self._filled:
                padded = -(-self._filled // ALIGN) * ALIGN
                # Zeros, not what an earlier file left in the buffer, in the block the cut keeps.
                self._views[self._filling][self._filled:padded] = bytes(padded - self._filled)
                self._send(padded)
            self._wait()
            os.ftruncate(self._fd, length)
            os.fsync(self._fd)
        finally:
            self._release()

    def abandon(self) -> None:
        """Close without writing the rest: the write this file was for has failed."""
        if not self.closed:
            self._release()

    def _send(self, length: int) -> None:
        """Hand the filling buffer's first ``length`` bytes to the writing thread, once it has written
        the other buffer, and fill that one next."""
        self._wait()
        chunk = self._views[self._filling][:length]
        self._sending = self._writer.submit(self._write_at, chunk, self._stored)
        self._filling = 1 - self._filling
        self._stored += self._filled
        self._filled = 0

    def _wait(self) -> None:
        """Until the chunk being written is on the disk; its write's error, if it failed."""
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.result()

    def _release(self) -> None:
        super().close()  # marked closed first: should what follows fail, no second close() retries it
        # A write still running reads a buffer that is about to be given back.
        self._writer.shutdown(wait=True)
        os.close(self._fd)
        for view, buffer in zip(self._views, self._buffers, strict=True):
            view.release()
            _give_back(buffer)

    def _write_at(self, chunk: memoryview, offset: int) -> None:
        """``chunk`` (a multiple of ALIGN bytes) to the file at ``offset``."""
        try:
            written = os.pwrite(self._fd, chunk, offset)
        except OSError as err:
            if err.errno != errno.EINVAL or not self.direct:
                raise
            _stop_direct(self._fd)
            self.direct = False
            written = os.pwrite(self._fd, chunk, offset)
        while written < chunk.nbytes:  # a short write: the disk is full, or a signal came
            more = os.pwrite(self._fd, chunk[written:], offset + written)
            if more == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written += more

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abandon()


class DirectFileSystem(FileSystem):
    """DCP's local filesystem, its new files written by DirectFile (which fsyncs each as it closes,
    so the writer itself need not); reads and everything else as DCP does them."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        # A failure abandons the file (DirectFile.__exit__); the BufferedWriter then finds it closed
        # and writes nothing.
        with DirectFile(os.fspath(path)) as direct:
            # torch.save makes ~40 write() calls per record, most of a few bytes: gathered in C, they
            # reach DirectFile's Python write() a few times per record instead (~10 ms of a rank's
            # CPU per save of ~100 tensors). Larger writes pass straight through.
            stream = io.BufferedWriter(direct, buffer_size=SMALL_WRITES_BYTES)
            yield stream
            stream.close()
