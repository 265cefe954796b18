"""The training program's torch floor and the private torch shapes train/compat.py uses, checked here."""

from __future__ import annotations

import inspect
import io
import re
import subprocess
import sys
import tomllib

import pytest
import torch
from torch.distributed.checkpoint import StorageReader, StorageWriter

from tests.conftest import REPO
from train import compat


def declared_floor(requirement_name: str) -> tuple[int, int]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{requirement_name}\b", d))
    match = re.fullmatch(rf"{requirement_name}>=(\d+)\.(\d+)", spec)
    assert match, f"pyproject.toml: {spec!r} is not '{requirement_name}>=X.Y'"
    return int(match.group(1)), int(match.group(2))


def test_the_declared_floor_is_the_programs_floor_and_this_torch_meets_it() -> None:
    assert declared_floor("torch") == compat.TORCH_FLOOR
    assert compat.torch_floor_problem(torch.__version__) is None


def test_the_dockerfiles_default_base_brings_no_torch_below_the_floor() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    found = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE)
    assert found, "docker/Dockerfile has no ARG BASE_IMAGE=default"
    base = found.group(1)
    bundled = re.match(r"(?:docker\.io/)?pytorch/pytorch:(\d+)\.(\d+)", base)
    if bundled:
        assert (int(bundled.group(1)), int(bundled.group(2))) >= compat.TORCH_FLOOR, base
    else:
        # A plain Python base: torch comes from the project's own `torch>=floor` dependency.
        assert re.match(r"(?:docker\.io/)?(?:library/)?python:3\.1[1-9]", base), base


@pytest.mark.parametrize("version, problem", [("2.13.0+cpu", False), ("2.14.1", False), ("3.0.0", False),
                                              ("2.12.1", True), ("2.7.1+cu128", True)])
def test_the_floor_check(version: str, problem: bool) -> None:
    found = compat.torch_floor_problem(version)
    assert (found is not None) == problem
    if found:
        assert found.startswith(f"{version} is older than 2.13") and "torch>=2.13" in found


def test_an_older_torch_stops_the_program_with_one_line_exit_2(tmp_path) -> None:
    # What `python -m train` does under torch 2.7.1 (the old default image's): one line, before any
    # import of an API the floor guarantees.
    fake = "import sys, runpy, torch; torch.__version__ = '2.7.1'; sys.argv[0] = 'train'; " \
           "runpy.run_module('train', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", fake, "--config", "digits", f"output_dir={tmp_path}/out"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "train: error: torch: 2.7.1 is older than 2.13, the oldest this program supports; " \
                          "use torch>=2.13\n"
    assert not (tmp_path / "out").exists()


def test_dcps_fsspec_storage_still_has_the_shape_we_use(tmp_path) -> None:
    from torch.distributed.checkpoint import _fsspec_filesystem

    for name in ("FsspecWriter", "FsspecReader"):
        assert hasattr(_fsspec_filesystem, name), f"torch moved {name}: update train/compat.py"
    writer_params = inspect.signature(_fsspec_filesystem.FsspecWriter).parameters
    assert {"path", "sync_files"} <= set(writer_params), f"FsspecWriter now takes {list(writer_params)}"
    assert isinstance(compat.FsspecWriter(f"file://{tmp_path}/w", sync_files=False), StorageWriter)
    (tmp_path / "r").mkdir()
    assert isinstance(compat.FsspecReader(f"file://{tmp_path}/r"), StorageReader)


def test_torch_load_reads_a_record_saved_without_its_crc32(tmp_path) -> None:
    """train.checkpoint_io saves without torch.save's CRC-32s, which torch.load does not check: if it
    starts checking, this fails before any checkpoint does."""
    from train.checkpoint_io import crc32_off

    tensor = torch.arange(1000, dtype=torch.float32)
    with crc32_off():
        torch.save(tensor, tmp_path / "t.pt")
    assert torch.serialization.get_crc32_options() is True
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True), tensor)


def saved_record(obj: object) -> memoryview:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return memoryview(bytearray(buffer.getvalue()))


SAVED_TENSORS = {
    "float32 matrix": torch.randn(5, 7),
    "transposed": torch.randn(4, 3).t(),
    "view into a larger storage": torch.arange(20, dtype=torch.float64)[3:9],
    "0-d": torch.tensor(2.5),
    "empty": torch.empty(0, 3),
    **{str(dtype): torch.arange(6).reshape(2, 3).to(dtype)
       for dtype in (torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
                     torch.uint8, torch.bool, torch.complex64, torch.complex128)},
}


@pytest.mark.parametrize("name", sorted(SAVED_TENSORS))
def test_a_torch_save_record_reads_as_torch_load_reads_it(name: str) -> None:
    """train.compat.tensor_in_record reads the layout torch.save writes: a change to it fails here."""
    record = saved_record(SAVED_TENSORS[name])
    expected = torch.load(io.BytesIO(record), weights_only=True)
    found = compat.tensor_in_record(record)
    assert found is not None, f"torch.save's record of a {name} tensor no longer has the layout tensor_in_record reads"
    assert (found.dtype, found.shape, found.stride()) == (expected.dtype, expected.shape, expected.stride())
    assert torch.equal(found, expected)


@pytest.mark.parametrize("name", sorted(SAVED_TENSORS))
def test_a_contiguous_tensor_bytes_are_found_from_its_record_head(name: str) -> None:
    """train.compat.tensor_bytes_in_head finds a contiguous tensor's bytes from a record's first 4 kB
    (DCP's readers read large tensors straight into place with it): a change to torch.save's layout
    fails here; what is not a whole contiguous storage is declined."""
    from train.checkpoint_io import RECORD_HEAD_BYTES

    tensor = SAVED_TENSORS[name]
    record = saved_record(tensor)
    found = compat.tensor_bytes_in_head(record[:RECORD_HEAD_BYTES])
    whole = tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == (
        tensor.numel() * tensor.element_size())
    assert (found is not None) == whole, f"torch.save's record of a {name} tensor: {found}"
    if found is not None:
        assert (found.dtype, found.shape) == (tensor.dtype, tuple(tensor.shape))
        stored = torch.frombuffer(record, dtype=torch.uint8, count=found.nbytes, offset=found.start) if found.nbytes \
            else torch.empty(0, dtype=torch.uint8)
        assert torch.equal(stored.view(tensor.dtype).reshape(tensor.shape), tensor)


def test_a_record_head_that_is_cut_short_or_not_a_tensor_is_declined() -> None:
    record = saved_record(torch.ones(4))
    assert compat.tensor_bytes_in_head(record[:200]) is None
    assert compat.tensor_bytes_in_head(record[:10]) is None
    assert compat.tensor_bytes_in_head(saved_record({"a": torch.ones(2)})) is None
    big_endian = bytes(record).replace(b"little", b"bigxxx")
    assert compat.tensor_bytes_in_head(memoryview(big_endian)) is None


@pytest.mark.parametrize("obj", [torch.randn(3).to(torch.float8_e4m3fn), {"a": torch.ones(2)}, [1, 2],
                                 torch.nn.Parameter(torch.ones(2))], ids=["float8", "dict", "list", "parameter"])
def test_records_of_anything_else_are_left_to_torch_load(obj: object) -> None:
    assert compat.tensor_in_record(saved_record(obj)) is None


@pytest.mark.parametrize("remote", [False, True], ids=["local", "fsspec"])
def test_a_dcp_checkpoint_loads_without_torch_load(tmp_path, monkeypatch: pytest.MonkeyPatch, remote: bool) -> None:
    """What DCP writes through our writer is read by tensor_in_record alone: if torch.save's records
    change, the readers would still work through torch.load, only slower, and this says so."""
    import torch.distributed.checkpoint as dcp

    from train.checkpoint_io import LocalReader, LocalWriter, RemoteReader

    # Tensors only: DCP's planner unpickles other objects with torch.load itself.
    state = {"w": torch.randn(64, 32), "b": torch.arange(32).bfloat16(), "step": torch.tensor(7)}
    dcp.save(state, storage_writer=LocalWriter(str(tmp_path), threads=2), no_dist=True)
    loaded = {"w": torch.zeros(64, 32), "b": torch.zeros(32, dtype=torch.bfloat16), "step": torch.tensor(0)}

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a record went to torch.load")

    monkeypatch.setattr(torch, "load", refused)
    reader = RemoteReader(f"file://{tmp_path}") if remote else LocalReader(str(tmp_path))
    dcp.load(loaded, storage_reader=reader, no_dist=True)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])
    assert loaded["step"].item() == 7


@pytest.mark.parametrize("remote", [False, True], ids=["local", "fsspec"])
def test_large_tensors_are_read_straight_into_place_and_the_rest_through_the_buffer(
        tmp_path, monkeypatch: pytest.MonkeyPatch, remote: bool) -> None:
    """A large record whose tensor is all of a contiguous target goes into that target without a
    copy; a small tensor and a view that is not contiguous still load through the buffer, to the
    same values. (Parts of a tensor, as another sharding asks for, are test_checkpoint_resume's.)"""
    import torch.distributed.checkpoint as dcp

    import train.checkpoint_io as checkpoint_io
    from train.checkpoint_io import DIRECT_READ_BYTES, LocalReader, LocalWriter, RemoteReader

    big = DIRECT_READ_BYTES // 4 * 2
    state = {"big": torch.randn(big), "bf16": torch.randn(big).bfloat16(), "small": torch.randn(10),
             "transposed": torch.randn(256, 128)}
    dcp.save(state, storage_writer=LocalWriter(str(tmp_path), threads=1), no_dist=True)
    targets = {"big": torch.zeros(big), "bf16": torch.zeros(big, dtype=torch.bfloat16), "small": torch.zeros(10),
               "transposed": torch.zeros(128, 256).t()}
    buffered: list[str] = []
    through_buffer = checkpoint_io._apply

    def counted(item, record, planner, where) -> None:
        buffered.append(item.storage_index.fqn)
        through_buffer(item, record, planner, where)

    monkeypatch.setattr(checkpoint_io, "_apply", counted)
    reader = RemoteReader(f"file://{tmp_path}") if remote else LocalReader(str(tmp_path))
    dcp.load(targets, storage_reader=reader, no_dist=True)
    assert sorted(buffered) == ["small", "transposed"]
    for name, tensor in state.items():
        assert torch.equal(targets[name], tensor), name


def test_a_damaged_record_is_left_to_torch_load() -> None:
    record = saved_record(torch.ones(4))
    assert compat.tensor_in_record(record[:-30]) is None
    assert compat.tensor_in_record(record[:10]) is None
