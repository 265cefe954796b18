"""Checkpoint files written past the page cache (train/direct_io.py), on real filesystems: the bytes
and lengths exact across chunk edges, a full disk raised, a refused O_DIRECT write finished through
the page cache, and no buffer lost on any path."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from train import direct_io
from train.direct_io import DirectFile

# Small chunks, so that a few hundred kB cross many chunk edges.
CHUNK = 64 << 10
# The buffers a file holds while it is written.
BUFFERS = 2


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct_io, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(direct_io, "_idle_buffers", [])


@pytest.fixture(params=["disk", "tmpfs"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A folder on this machine's disk (ext4 here), or in /dev/shm (tmpfs)."""
    if request.param == "disk":
        return tmp_path
    shm = Path("/dev/shm") / f"gangrun-direct-io-{os.getpid()}"
    shm.mkdir()
    request.addfinalizer(lambda: shutil.rmtree(shm))
    return shm


def pieces(seed: int) -> list[bytes]:
    """Writes of the sizes torch.save makes (a few bytes of header, then large storages), some of
    them exactly a chunk or a page."""
    rng = random.Random(seed)
    sizes = [1, 30, 4096, CHUNK, CHUNK - 1, 3 * CHUNK + 7, 0, 511, 2 * CHUNK, 64] + \
            [rng.randrange(1, 3 * CHUNK) for _ in range(20)]
    return [rng.randbytes(size) for size in sizes]


def test_a_file_holds_exactly_what_was_written(folder: Path) -> None:
    path = folder / "records"
    written = pieces(0)
    with DirectFile(str(path)) as file:
        for piece in written:
            before = file.tell()
            assert file.write(memoryview(piece)) == len(piece)
            file.flush()  # torch.save flushes after every record
            assert file.tell() == before + len(piece)
    assert path.read_bytes() == b"".join(written)
    assert len(direct_io._idle_buffers) == BUFFERS  # all back for the next file


def test_a_failed_write_closes_its_file_and_keeps_its_buffers(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the save failed"), DirectFile(str(tmp_path / "partial")) as file:
        file.write(b"x" * (CHUNK + 10))
        raise RuntimeError("the save failed")
    assert file.closed
    assert len(direct_io._idle_buffers) == BUFFERS


def test_a_write_the_filesystem_cannot_align_goes_through_the_page_cache(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk whose block is larger than the alignment assumed refuses an O_DIRECT write (EINVAL);
    the file is finished through the page cache instead of failing the save."""
    monkeypatch.setattr(direct_io, "ALIGN", 1)
    path = tmp_path / "records"
    with DirectFile(str(path)) as file:
        assert file.direct
        file.write(b"odd" * 1001)
    assert not file.direct
    assert path.read_bytes() == b"odd" * 1001


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
def test_a_full_disk_is_raised_as_such(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        with pytest.raises(OSError) as raised, DirectFile(str(disk / "records")) as file:
            for _ in range(8):
                file.write(bytes(CHUNK))
        assert raised.value.errno == errno.ENOSPC
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert len(direct_io._idle_buffers) == BUFFERS


MOUNTINFO = "\n".join([
    r"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
    r"30 22 254:1 / /data rw,relatime shared:2 - xfs /dev/vdb rw",
    r"31 30 0:40 / /data/scratch rw,relatime - lustre 10.0.0.1@tcp:/fs rw",
    r"32 30 0:41 / /data/scratch rw,relatime - tmpfs tmpfs rw",
    r"33 22 0:42 / /mnt/my\040disk rw,relatime shared:3 - nfs4 server:/export rw",
    "a line that is not a mount",
])


@pytest.mark.parametrize("path, kind", [
    ("/", "ext4"), ("/home/me/run", "ext4"), ("/data", "xfs"), ("/data/run/step-00000001", "xfs"),
    ("/database", "ext4"),  # not under /data
    ("/data/scratch/run", "tmpfs"),  # the later of two mounts on one point
    ("/mnt/my disk/run", "nfs4"),
])
def test_the_filesystem_of_a_path_is_that_of_the_deepest_mount_above_it(path: str, kind: str) -> None:
    assert direct_io.filesystem_type(path, MOUNTINFO) == kind


@pytest.mark.skipif(shutil.which("findmnt") is None, reason="findmnt (util-linux) is not installed")
def test_saves_write_past_the_page_cache_only_on_a_local_disk(tmp_path: Path) -> None:
    """The same filesystem type as findmnt names for real folders; LocalWriter writes directly
    exactly where that type is a local block device's (not on /dev/shm's tmpfs)."""
    from train.checkpoint_io import LocalWriter

    mountinfo = Path("/proc/self/mountinfo").read_text()
    for folder in (tmp_path, Path("/dev/shm"), Path("/proc")):
        found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(folder)], capture_output=True,
                               text=True, check=True).stdout.split()[-1]
        assert direct_io.filesystem_type(os.path.realpath(folder), mountinfo) == found
        not_yet = folder / "run" / "step-00000001"  # DCP makes the step folder as it saves
        direct = found in direct_io.LOCAL_BLOCK_FILESYSTEMS
        assert direct_io.writes_direct(str(not_yet)) is direct
        if folder != Path("/proc"):
            writer = LocalWriter(str(not_yet), threads=1)
            assert isinstance(writer.fs, direct_io.DirectFileSystem) is direct
            assert writer.sync_files is not direct
    assert not direct_io.writes_direct("/dev/shm")
