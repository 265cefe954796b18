"""Checkpoint pieces in one process: the store's commit and pruning, RNG, data position, config, resume."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import random
import re
import signal
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.utils.data import TensorDataset

from tests.checkpoint_runs import assert_models_equal, committed_steps, read_checkpoint, run_in_process
from train import loop
from train.checkpoint import Checkpointer, TrainingParts
from train.checkpoint_store import MANIFEST, METADATA, CheckpointStore, step_dir_name
from train.config import ConfigError, load_config
from train.data import GlobalBatchSampler
from train.distributed import World
from train.metrics import Metrics
from train.notice import NOTICE
from train.rng import capture_rng, restore_rng
from train.signals import StopFlag

# A world of one saves and loads without a process group, which DCP warns about each time.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

DIGITS = ["train.global_batch_size=32", "train.micro_batch_size=16", "train.log_every=5", "train.eval_every=0",
          "metrics.plot=false", "checkpoint.every=5", "checkpoint.keep=0"]


def make_step(store: CheckpointStore, step: int, metadata: bool, manifest: bool) -> None:
    path = store.path(step)
    os.makedirs(path)
    with open(f"{path}/__0_0.distcp", "wb") as f:
        f.write(b"partial")
    if metadata:
        open(f"{path}/{METADATA}", "wb").close()
    if manifest:
        store.commit(path, {"step": step})


def test_listing_skips_incomplete_and_pruning_keeps_newest_and_in_flight(tmp_path):
    store = CheckpointStore(str(tmp_path))
    for step, metadata, manifest in ((1, True, True), (2, True, True), (3, True, False), (4, True, True),
                                     (5, False, False)):
        make_step(store, step, metadata, manifest)
    listing = store.list_steps()
    assert listing.committed == [4, 2, 1] and listing.incomplete == [5, 3]
    # 1 is beyond keep=2; 3 is a dead save older than the newest commit; 5 may still be being written.
    assert store.prune(keep=2, newest=4) == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [step_dir_name(s) for s in (2, 4, 5)]
    assert not list(tmp_path.glob(f"*/.{MANIFEST}.*")), "no temporary manifest left behind"
    assert oct((tmp_path / step_dir_name(4) / MANIFEST).stat().st_mode & 0o777) == "0o644"


def test_uncommit_withdraws_a_commit_and_says_whether_there_was_one(tmp_path):
    store = CheckpointStore(str(tmp_path))
    make_step(store, 4, metadata=True, manifest=True)
    assert store.uncommit(store.path(4)) is True
    assert store.list_steps().incomplete == [4] and (tmp_path / step_dir_name(4) / "__0_0.distcp").exists()
    assert store.uncommit(store.path(4)) is False


def test_file_url_writes_where_it_says(tmp_path):
    # FileSystemWriter("file:///x") would write into a folder literally named "file:".
    store = CheckpointStore(f"file://{tmp_path}/ckpt")
    assert store.local and store.root == f"{tmp_path}/ckpt"
    dcp.save({"w": torch.arange(4.0)}, storage_writer=store.writer(store.path(7)), no_dist=True)
    assert (tmp_path / "ckpt" / step_dir_name(7) / METADATA).is_file()
    assert not list(tmp_path.rglob("file:"))


def test_rng_round_trip():
    state = capture_rng(torch.device("cpu"))
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    first = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(3))
    restore_rng(state, torch.device("cpu"))
    second = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and first[1:3] == second[1:3] and np.array_equal(first[3], second[3])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_data_position_restripes_to_any_world_size(world):
    dataset = TensorDataset(torch.arange(100))
    samplers = [GlobalBatchSampler(dataset, world, rank, global_batch=12, seed=3) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(1)
        sampler.start = 24  # two global batches consumed, on whatever world size saved them
    resumed = sorted(i for sampler in samplers for i in sampler)
    # Exactly the rest of the epoch's whole global batches: nothing repeated, nothing skipped.
    assert resumed == sorted(samplers[0].epoch_order()[24:96])


def test_checkpoint_config_errors():
    with pytest.raises(ConfigError, match=r"checkpoint\.keep: 1 leaves no committed checkpoint"):
        load_config("digits", ["checkpoint.async_save=true", "checkpoint.keep=1"])
    with pytest.raises(ConfigError, match=r"train\.precision: fp16 under FSDP"):
        load_config("digits", ["train.parallel=fsdp", "train.precision=fp16"])
    assert load_config("digits", ["output_dir=runs/x/"]).checkpoint_dir == "runs/x/checkpoints"
    assert load_config("digits", ["checkpoint.dir=s3://b/run"]).checkpoint_dir == "s3://b/run"


def test_stop_signals_only_set_a_flag():
    with StopFlag() as flag:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert flag.name == "SIGUSR2" and flag.requested(World(0, 0, 1, torch.device("cpu")))
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_the_stop_flag_paces_its_agreements_to_about_a_tenth_of_a_second(monkeypatch):
    world = World(0, 0, 1, torch.device("cpu"))
    now = [0.0]
    # A fake clock on which every step takes 1 ms.
    monkeypatch.setattr("train.signals.time.perf_counter", lambda: now[0])
    agreed_at = []
    with StopFlag() as flag:
        for step in range(1, 400):
            now[0] += 0.001
            NOTICE.signum = signal.SIGTERM if step == 250 else NOTICE.signum
            if flag.requested(world):
                agreed_at.append(step)
                break
    # Checked at step 1, then about every 0.1 s / 1 ms = 100 steps: the stop lands within that.
    assert agreed_at and 250 <= agreed_at[0] <= 350


def test_stop_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={whole}"])
    parts = tmp_path / "parts"
    monkeypatch.setattr(loop, "StopFlag", signalled_at_once())
    assert run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={parts}"]) == "SIGTERM"
    assert committed_steps(parts / "checkpoints") == [1]
    monkeypatch.undo()
    assert run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={parts}"]) is None
    assert committed_steps(parts / "checkpoints") == [1, 5, 10]
    assert_models_equal(read_checkpoint(parts / "checkpoints" / step_dir_name(10), tmp_path / "s"),
                        read_checkpoint(whole / "checkpoints" / step_dir_name(10), tmp_path / "s"))


def test_explicit_resume_must_be_committed(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint\.resume: .* is not a committed checkpoint"):
        run_in_process([*DIGITS, "train.max_steps=1", f"output_dir={tmp_path}",
                        f"checkpoint.resume={tmp_path}/nowhere"])


def test_never_refuses_a_folder_that_holds_an_earlier_runs_commits(tmp_path):
    run_in_process([*DIGITS, "train.max_steps=5", f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"checkpoint\.resume: never, but .* holds an earlier run's step 5, .*"
                                          r"start over in a new output_dir"):
        run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={tmp_path}", "checkpoint.resume=never"])
    assert committed_steps(tmp_path / "checkpoints") == [5]


def test_a_resumed_history_drops_the_undone_steps_and_the_plot_draws_all_of_it(tmp_path):
    world = World(0, 0, 1, torch.device("cpu"))
    with Metrics(tmp_path, world, start_step=0, max_steps=10, log_every=2, global_batch=8, tensorboard=False) as m:
        for step in range(1, 8):
            m.after_step(step, 0, torch.tensor(1.0 / step), torch.tensor(1.0), 1e-3)
    # The attempt logged steps 2, 4, 6 and died after step 7; the checkpoint it resumes from is step 4.
    with Metrics(tmp_path, world, start_step=4, max_steps=10, log_every=2, global_batch=8, tensorboard=False) as m:
        assert [row["step"] for row in m.rows] == [2, 4]
        for step in range(5, 11):
            m.after_step(step, 0, torch.tensor(1.0 / step), torch.tensor(1.0), 1e-3)
        assert m.plot() == tmp_path / "curves.png"
        assert [row["step"] for row in m.rows] == [2, 4, 6, 8, 10]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8, 10]


def test_resume_with_dropout_is_exact(tmp_path, monkeypatch):
    # Dropout draws from the torch RNG the checkpoint restores, so nothing else may draw from it on a
    # resume: a DataLoader iterator without a generator of its own takes its workers' seed from it.
    gpt = ["model.d_model=32", "model.seq_len=16", "model.dropout=0.1", "data.fake_train_size=256",
           "train.global_batch_size=16", "train.micro_batch_size=8", "train.max_steps=6", "train.log_every=3",
           "train.eval_every=2", "data.fake_eval_size=16", "metrics.plot=false", "checkpoint.every=0",
           "checkpoint.keep=0"]
    run_in_process([*gpt, f"output_dir={tmp_path / 'whole'}"], config="gpt-tiny")
    monkeypatch.setattr(loop, "StopFlag", signalled_at_once())
    assert run_in_process([*gpt, f"output_dir={tmp_path / 'parts'}"], config="gpt-tiny") == "SIGTERM"
    monkeypatch.undo()
    assert run_in_process([*gpt, f"output_dir={tmp_path / 'parts'}"], config="gpt-tiny") is None
    assert_models_equal(read_checkpoint(tmp_path / "parts" / "checkpoints" / step_dir_name(6), tmp_path / "s"),
                        read_checkpoint(tmp_path / "whole" / "checkpoints" / step_dir_name(6), tmp_path / "s"))


def test_learning_rate_is_what_lambdalr_computed_bit_for_bit():
    optim = load_config("digits", ["optim.lr=3e-3", "optim.min_lr=1e-4", "optim.warmup_steps=7"]).optim
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    # What the loop used before: LambdaLR over the same factor; now the rate is set from the step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: loop.lr_factor(s, optim.warmup_steps, 40, optim.min_lr / optim.lr))
    for step in range(45):
        assert optim.lr * loop.lr_factor(step, optim.warmup_steps, 40, optim.min_lr / optim.lr) == \
            optimizer.param_groups[0]["lr"], f"step {step}"
        optimizer.step()
        scheduler.step()


def test_a_checkpoint_of_the_old_layout_still_resumes_exactly(tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={whole}"])
    # Saved as gangrun did before: a LambdaLR "scheduler" entry, and the data position also in the
    # train state.
    state_dict = Checkpointer._state_dict

    def old_layout(self: Checkpointer, parts: TrainingParts, *args: Any, **kwargs: Any) -> dict:
        sd = state_dict(self, parts, *args, **kwargs)
        position = parts.data.position()
        return {**sd, "scheduler": {"last_epoch": parts.state.step},
                "train": {**sd["train"], "epoch": position.epoch, "epoch_samples": position.consumed}}

    parts = tmp_path / "parts"
    monkeypatch.setattr(Checkpointer, "_state_dict", old_layout)
    monkeypatch.setattr(loop, "StopFlag", signalled_at_once())
    assert run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={parts}"]) == "SIGTERM"
    monkeypatch.undo()
    step1 = parts / "checkpoints" / step_dir_name(1)
    assert "scheduler" in CheckpointStore(str(parts / "checkpoints")).read_manifest(str(step1))["contents"]
    assert run_in_process([*DIGITS, "train.max_steps=10", f"output_dir={parts}"]) is None
    assert_models_equal(read_checkpoint(parts / "checkpoints" / step_dir_name(10), tmp_path / "s"),
                        read_checkpoint(whole / "checkpoints" / step_dir_name(10), tmp_path / "s"))


def signalled_at_once() -> type[StopFlag]:
    """A StopFlag as if SIGTERM arrived during the first step."""

    class SignalledAtOnce(StopFlag):
        def requested(self, world: World) -> bool:
            NOTICE.signum = signal.SIGTERM
            return super().requested(world)

    return SignalledAtOnce


def test_a_blocking_save_writes_one_file_per_core_the_rank_has_to_itself() -> None:
    from train.checkpoint_io import MAX_WRITE_THREADS, write_threads

    assert write_threads({"LOCAL_WORLD_SIZE": "1"}, cpus=2) == 2
    assert write_threads({"LOCAL_WORLD_SIZE": "2"}, cpus=2) == 1
    assert write_threads({"LOCAL_WORLD_SIZE": "8"}, cpus=4) == 1
    assert write_threads({}, cpus=64) == MAX_WRITE_THREADS


def test_a_rank_file_ends_with_its_small_records_side_by_side(tmp_path) -> None:
    """Every rank loads the small replicated items (AdamW's step counters); in one run they must
    come in one read, not as records scattered between another rank's large shards."""
    from torch.distributed.checkpoint import FileSystemReader

    from train.checkpoint_io import LocalWriter

    state = {f"layer{i}.{kind}": torch.zeros(size) for i in range(4)
             for kind, size in (("weight", 4096), ("step", 1), ("bias", 64))}
    dcp.save(state, storage_writer=LocalWriter(str(tmp_path), threads=1), no_dist=True)
    where = FileSystemReader(str(tmp_path)).read_metadata().storage_data
    offsets = {index.fqn: stored.offset for index, stored in where.items()}
    by_offset = sorted(offsets, key=offsets.__getitem__)
    assert [fqn.split(".")[1] for fqn in by_offset] == ["weight"] * 4 + ["bias"] * 4 + ["step"] * 4, by_offset


def _in_page_cache(path: str) -> bool:
    """Whether every page of ``path`` is in the page cache, by mincore(2) over a mapping of it, which
    reads nothing (a read with RWF_NOWAIT starts the reads it declines to wait for)."""
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    flags = (ctypes.c_ubyte * pages)()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.addressof(start), size, flags) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            del start  # the mapping cannot close while a ctypes object exports it
    return all(flag & 1 for flag in flags)


def test_a_load_reads_ahead_the_files_its_rank_wrote(tmp_path) -> None:
    """A load on as many ranks reads the rank's own files into the page cache while it plans; which
    files those are follows DCP's writer's names for them."""
    from train.checkpoint_io import LocalWriter, files_of_rank, read_ahead

    state = {f"w{i}": torch.full((1 << 18,), float(i)) for i in range(4)}
    dcp.save(state, storage_writer=LocalWriter(str(tmp_path), threads=2), no_dist=True)
    files = files_of_rank(str(tmp_path), 0)
    assert files and files == sorted(str(path) for path in tmp_path.glob("*.distcp"))
    assert files_of_rank(str(tmp_path), 1) == []
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if any(_in_page_cache(path) for path in files):
        pytest.skip(f"{tmp_path} keeps its files in memory (tmpfs?)")
    with read_ahead([*files, str(tmp_path / "__0_9.distcp")]):  # a file that is not there is passed over
        pass
    assert all(_in_page_cache(path) for path in files)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("remote", [False, True], ids=["local", "fsspec"])
def test_a_failed_write_thread_fails_the_save(tmp_path, remote: bool) -> None:
    """DCP's writer drops a failure in a write thread of its own and reports the others' writes as
    the whole save (pytorch#191391): the save must fail, with no metadata written."""
    import threading

    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from train.checkpoint_io import LocalWriter, RemoteWriter

    class FailsOffTheCallingThread(DefaultSavePlanner):
        def resolve_data(self, write_item: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                raise OSError("a write failed")
            return super().resolve_data(write_item)

    state = {f"t{i}": torch.randn(1000) for i in range(6)}
    writer = RemoteWriter(f"file://{tmp_path}", threads=2) if remote else LocalWriter(str(tmp_path), threads=2)
    with pytest.raises(CheckpointException, match="items were not written: a write thread failed"):
        dcp.save(state, storage_writer=writer, planner=FailsOffTheCallingThread(), no_dist=True)
    assert not (tmp_path / METADATA).exists()


def test_a_full_disk_is_raised_as_the_error_that_says_so() -> None:
    """torch.save makes its own RuntimeError of a write's ENOSPC; DCP's exchange of failures between
    ranks would drop the OSError it keeps as context."""
    import errno

    from train.checkpoint_io import space_errors_kept

    with pytest.raises(OSError) as raised, space_errors_kept():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            # torch.save's shape: the OSError only as the context of its own error.
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(RuntimeError), space_errors_kept():
        raise RuntimeError("something else")


def test_a_blocking_save_to_an_object_store_uploads_several_files_at_once(tmp_path) -> None:
    from train.checkpoint_io import REMOTE_WRITE_THREADS, RemoteWriter
    from train.checkpoint_store import CheckpointStore

    store = CheckpointStore(f"memory://{tmp_path.name}/ckpt")
    blocking, background = store.writer(store.path(1)), store.writer(store.path(1), background=True)
    assert isinstance(blocking, RemoteWriter) and isinstance(background, RemoteWriter)
    assert blocking.thread_count == REMOTE_WRITE_THREADS > 1
    assert background.thread_count == 1


@pytest.mark.parametrize("free_mib, async_saves", [(1, False), (None, True), (1 << 20, True)],
                         ids=["short", "no-dev-shm", "room"])
def test_async_saves_stage_only_where_dev_shm_holds_the_state(tmp_path, monkeypatch, caplog, free_mib: int | None,
                                                              async_saves: bool) -> None:
    """A container's 64 MiB /dev/shm would end the run at its first async save (SIGBUS or ENOSPC in
    shared memory): the saves go blocking instead, every checkpoint still committed, with one line."""
    import train.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "shm_free_bytes", lambda: None if free_mib is None else free_mib << 20)
    staged: list[int] = []
    in_background = Checkpointer._save_in_background

    def counted(self: Checkpointer, *args: Any) -> None:
        staged.append(args[2])
        in_background(self, *args)

    monkeypatch.setattr(Checkpointer, "_save_in_background", counted)
    out = tmp_path / "run"
    run_in_process([*DIGITS, "train.max_steps=10", "checkpoint.async_save=true", f"output_dir={out}"])
    assert committed_steps(out / "checkpoints") == [5, 10]
    assert (staged == [5]) == async_saves, staged
    shortfall = [r.getMessage() for r in caplog.records if "async saves stage" in r.getMessage()]
    assert bool(shortfall) != async_saves
    if shortfall:
        assert re.fullmatch(r"checkpoint: /dev/shm has 1 MiB free, short of the \d+ MiB async saves stage "
                            r"\(1 rank\(s\) on this node x \d+ MiB\); saving blocking instead: give the container "
                            r"a larger /dev/shm \(--shm-size on Kubernetes and docker\) or set "
                            r"checkpoint.async_save=false",
                            shortfall[0])


def test_the_staged_state_of_every_rank_on_the_node_must_fit_together() -> None:
    from train.staging_room import MIB, staging_shortfall, state_bytes

    per_rank = state_bytes({"model": {"w": torch.zeros(15 * MIB // 4)}, "optimizer": [torch.zeros(15 * MIB // 4)],
                            "step": 3})
    assert per_rank == 30 * MIB
    assert staging_shortfall(free=64 * MIB, per_rank=per_rank, local_ranks=2) is None
    assert staging_shortfall(free=64 * MIB, per_rank=per_rank, local_ranks=4) == (
        "/dev/shm has 64 MiB free, short of the 120 MiB async saves stage (4 rank(s) on this node x 30 MiB)")
