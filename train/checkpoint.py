"""Sharded checkpoints with torch.distributed.checkpoint: save (sync or async), commit, find, load, reshard.

One ``dcp.save`` per checkpoint writes every rank's shard of the model and optimizer plus the
small state (scaler, train state, data position, each rank's RNG). The learning rate is a function
of the step, so it needs no state of its own. Rank 0 then commits
it (see checkpoint_store) and prunes old ones off the training path. Loading goes through DCP's
global metadata, so a checkpoint saved on W ranks loads on any M, and FSDP, DDP and single-process
runs read each other's checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import signal
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.metadata import STATE_DICT_TYPE
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from train.checkpoint_io import causes, files_of_rank, read_ahead, save_planner, space_error
from train.checkpoint_process import CheckpointProcess
from train.checkpoint_store import CheckpointStore
from train.config import Config, ConfigError
from train.contract import NOTICE_SIGNAL
from train.distributed import World, all_gather_floats, all_reduce_sum
from train.metrics import log
from train.progress import Progress
from train.rng import capture_rng, restore_rng, rng_key
from train.staging_room import SharedMemoryStager, shm_free_bytes, staging_shortfall, state_bytes
from train.stream import DataStream

# A world of one saves and loads with no process group on purpose; DCP warns about that on every call.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized",
                        category=UserWarning)

# Test hook: on a job's first attempt, rank 0 SIGKILLs itself when this step's data and .metadata are
# written but its commit is not: the one moment a checkpoint looks whole to DCP yet must not load.
KILL_BEFORE_COMMIT_ENV = "GANGRUN_TEST_KILL_BEFORE_COMMIT"


@dataclass
class TrainState:
    """Where training stands: the optimizer steps taken and the samples they consumed."""

    step: int = 0
    samples_seen: int = 0


@dataclass
class TrainingParts:
    """Everything a checkpoint saves and restores, as the loop holds it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    state: TrainState
    data: DataStream


def _version() -> str:
    try:
        return metadata.version("gangrun")
    except metadata.PackageNotFoundError:
        return "unknown"


def _broadcast(value: Any) -> Any:
    """Rank 0's value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def keep_notices_off_this_thread() -> None:
    """Block the notice signal (Slurm's USR2) in the calling thread, and so in every thread and process
    it starts: the checkpoint process (train.checkpoint_process) is started from here.

    Slurm signals every process of a job step, that process included, and USR2's default action
    would kill it mid-save; the training process alone decides when to stop. A blocked signal stays
    blocked across exec, and the main thread, which never blocks it, still takes every notice.
    SIGTERM stays deliverable: it is how torchrun and multiprocessing end that process. SIGINT need
    not be blocked (multiprocessing's resource tracker unblocks it in this thread anyway): a
    terminal's Ctrl-C reaches its foreground process group only, and torchrun starts each worker in
    a session of its own.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {NOTICE_SIGNAL})


class CheckpointSpaceError(RuntimeError):
    """A save ran out of space: one line for the user; the commits before it are untouched."""


def out_of_space(err: BaseException | None) -> bool:
    """ENOSPC (or EDQUOT) anywhere in ``err``: its causes, or the per-rank failures DCP gathered."""
    return space_error(err) is not None or any(
        isinstance(link, CheckpointException) and any(out_of_space(e) for e, _ in link.failures.values())
        for link in causes(err))


def _first_failure(err: BaseException) -> str:
    """``err`` in one line: for DCP's CheckpointException, the first error it wraps (alone, a load
    on one rank labels it rank 0 whatever the rank)."""
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


class Checkpointer:
    """Saves into ``cfg.checkpoint_dir`` and finds what to resume from, for one run.

    It decides when to save (``after_step``, ``after_run``). As a context manager it finishes the
    save in flight on a normal exit, and abandons it on an exception (its peers may be gone, and
    waiting on their collectives would hang the rank instead of letting it fail).
    """

    def __init__(self, cfg: Config, world: World, progress: Progress | None = None) -> None:
        self.cfg, self.world = cfg.checkpoint, world
        # Saving and resuming are phases of their own for the agent's hang watchdog.
        self.progress = progress or Progress({})
        self.store = CheckpointStore(cfg.checkpoint_dir)
        self.config_toml = cfg.to_toml()
        # The step whose checkpoint is already committed in this store (saved or resumed from).
        self.saved_step: int | None = None
        self._pending: Future | None = None
        self._staging: Future | None = None
        self._async_pool: ThreadPoolExecutor | None = None
        self._async_group: dist.ProcessGroup | None = None
        self._stager: DefaultStager | SharedMemoryStager | None = None
        self._process: CheckpointProcess | None = None
        if self.cfg.async_save:
            self._async_pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-commit",
                                                  initializer=keep_notices_off_this_thread)
            if dist.is_initialized():
                # Background saves need a CPU backend ("A CPU backend must be enabled for async save"
                # on an nccl-only group), and a group of their own so their collectives never
                # interleave with the training loop's.
                group = dist.new_group(backend="gloo")
                assert isinstance(group, dist.ProcessGroup), "this rank is in the world group"
                self._async_group = group
        self._prune_pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-prune") if world.is_main else None

    # -- finding -------------------------------------------------------------------------------

    def find_resume(self) -> str | None:
        """The step folder to resume from (decided on rank 0, broadcast), or None to start fresh."""
        found: tuple[str | None, str | None] = (None, None)
        if self.world.is_main:
            found = self._find_on_rank0()
        path, error = _broadcast(found)
        if error:
            fix = ("start over in a new output_dir or checkpoint.dir, delete that one, or use auto to continue it"
                   if self.cfg.resume == "never" else "point it at a committed step-<N> folder, or use auto")
            raise ConfigError("checkpoint.resume", error, fix)
        return path

    def _find_on_rank0(self) -> tuple[str | None, str | None]:
        if self.cfg.resume == "never":
            # Its saves would mix with the earlier run's: pruning keeps the newest steps, which may be
            # the earlier run's, and deletes this run's; auto would later resume the earlier run.
            committed = self.store.list_steps().committed
            if committed:
                return None, (f"never, but {self.store.display(self.store.root)} holds an earlier run's step "
                              f"{committed[0]}, which this run's saves would mix with")
            return None, None
        if self.cfg.resume != "auto":
            explicit = CheckpointStore(self.cfg.resume)
            if not explicit.is_committed(explicit.root):
                return None, f"'{self.cfg.resume}' is not a committed checkpoint (no .metadata and commit.json)"
            return self.cfg.resume, None
        listing = self.store.list_steps()
        newest = listing.committed[0] if listing.committed else -1
        for step in listing.incomplete:
            if step > newest:
                log.warning(f"checkpoint: skipping incomplete {self.store.display(self.store.path(step))} "
                            "(a save that did not finish)")
        if newest < 0:
            return None, None
        return self.store.display(self.store.path(newest)), None

    # -- state ---------------------------------------------------------------------------------

    def _state_dict(self, parts: TrainingParts, with_rng: bool, keys: list[str] | None = None) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(parts.model, parts.optimizer)
        sd: dict[str, Any] = {
            "model": model_sd,
            "optimizer": optim_sd,
            "train": dataclasses.asdict(parts.state),
            "data": parts.data.state_dict(),
        }
        if parts.scaler is not None and (keys is None or "scaler" in keys):
            sd["scaler"] = parts.scaler.state_dict()
        if with_rng:
            sd[rng_key(self.world.rank)] = capture_rng(self.world.device)
        return sd

    # -- loading -------------------------------------------------------------------------------

    def resume(self, parts: TrainingParts) -> None:
        """Restore ``parts`` from the checkpoint ``checkpoint.resume`` names, if any: the same
        command starts and restarts a run."""
        self.progress.phase("resume")
        path = self.find_resume()
        if path is not None:
            self.load(path, parts)

    def load(self, path: str, parts: TrainingParts) -> None:
        """Restore ``parts`` from a committed checkpoint saved at any world size."""
        store = CheckpointStore(path)
        # Every rank reads the small manifest itself: one broadcast fewer (two gloo exchanges).
        manifest = store.read_manifest(store.root)
        saved_world = manifest["world_size"]
        same_world = saved_world == self.world.world_size
        # Saved on as many ranks, this rank's shards are in the files this rank wrote.
        with read_ahead(files_of_rank(store.root, self.world.rank) if same_world and store.local else []):
            sd = self._state_dict(parts, with_rng=same_world, keys=manifest["contents"])
            self._read(sd, store, path)
        set_state_dict(parts.model, parts.optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optimizer"])
        if parts.scaler is not None and "scaler" in sd:
            parts.scaler.load_state_dict(sd["scaler"])
        parts.data.load_state_dict(sd["data"])
        for key, value in sd["train"].items():
            setattr(parts.state, key, int(value))
        if same_world:
            restore_rng(sd[rng_key(self.world.rank)], self.world.device)
        elif self.world.is_main:
            log.warning(f"checkpoint: saved on {saved_world} ranks, resuming on {self.world.world_size}: "
                        "data position and weights carry over; RNG streams start afresh")
        if store.root == self.store.path(parts.state.step):
            self.saved_step = parts.state.step
        log.info(f"checkpoint: resumed from {path} (step {parts.state.step}, epoch {parts.data.epoch}, "
                 f"saved on {saved_world} ranks)")

    def _read(self, sd: dict[str, Any], store: CheckpointStore, path: str) -> None:
        """``sd`` filled from the checkpoint, each rank reading on its own, then one exchange of
        who failed: a rank that did raises its error, the others name it.

        DCP's distributed load has every rank read the metadata and plan its own reads, as here, and
        adds three exchanges of pickled objects over the process group (the plans to rank 0 and
        back, then every rank's outcome) that serve only to share failures; on 2 gloo ranks they
        and the rank skew they expose were ~20 ms of a 160 ms load of 192 MB (phase timing).
        """
        failed: BaseException | None = None
        try:
            dcp.load(sd, storage_reader=store.reader(store.root), no_dist=True)
        except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
            failed = err
        failing = [rank for rank, flag in enumerate(all_gather_floats(float(failed is not None), self.world)) if flag]
        if failed is not None:
            message = f"checkpoint: rank {self.world.rank} could not load {path}: {_first_failure(failed)}"
            raise RuntimeError(message) from failed
        if failing:
            raise RuntimeError(f"checkpoint: rank(s) {', '.join(map(str, failing))} could not load {path}; "
                               "their logs say why")

    # -- saving --------------------------------------------------------------------------------

    def after_step(self, parts: TrainingParts, last: bool, stopping: bool) -> None:
        """The save rule. On an agreed stop: a blocking save, since the process exits next. Every
        ``checkpoint.every`` steps: a save, in the background when ``checkpoint.async_save``. The
        last step is saved by ``after_run``."""
        if stopping:
            self.save(parts, blocking=True)
        elif not last and self.cfg.every and parts.state.step % self.cfg.every == 0:
            self.save(parts, blocking=False)

    def after_run(self, parts: TrainingParts) -> None:
        """Training reached its end: that step is saved and committed before the program exits
        (also when a run resumed at or past max_steps from elsewhere)."""
        with self._space_errors(self.store.url):
            self.wait()
        if self.saved_step != parts.state.step:
            self.save(parts, blocking=True)

    def save(self, parts: TrainingParts, blocking: bool) -> None:
        """Checkpoint the current step: committed on return when ``blocking``, else in the background."""
        step = parts.state.step
        path = self.store.path(step)
        phase = self.progress.phase_name
        self.progress.phase("save")
        try:
            with self._space_errors(path):
                self._save(parts, step, path, blocking)
        finally:
            self.progress.phase(phase)

    @contextlib.contextmanager
    def _space_errors(self, path: str) -> Iterator[None]:
        """A full device becomes one line naming what is still safe, instead of a traceback per rank."""
        try:
            yield
        except (OSError, CheckpointException) as err:
            if not out_of_space(err):
                raise
            newest = f"step {self.saved_step}" if self.saved_step is not None else "none yet"
            raise CheckpointSpaceError(f"checkpoint: no space left on the device writing {self.store.display(path)}; "
                                       f"the newest commit ({newest}) is intact: free space or set checkpoint.dir "
                                       "elsewhere, then run the same command to resume") from None

    def _save(self, parts: TrainingParts, step: int, path: str, blocking: bool) -> None:
        self.wait()
        sd = self._state_dict(parts, with_rng=True)
        if not blocking and self._async_pool is not None and self._stager is None:
            self._async_pool = self._async_pool_if_room(self._async_pool, sd)
        pool = None if blocking else self._async_pool
        writer = self.store.writer(path, background=pool is not None)
        if pool is None:
            self._uncommit(path)
            dcp.save(sd, storage_writer=writer, planner=save_planner(), no_dist=not dist.is_initialized())
            self._commit(step, path, sorted(sd))
            return
        # The copy into the reused buffers is the one part training waits for (wait_for_staging).
        staged = self._stager_for(parts.model).stage(sd)
        if isinstance(staged, Future):
            self._staging = staged
        self._pending = pool.submit(self._save_in_background, staged, writer, step, path, sorted(sd))

    def _async_pool_if_room(self, pool: ThreadPoolExecutor, sd: STATE_DICT_TYPE) -> ThreadPoolExecutor | None:
        """At the first async save: ``pool`` where every node's /dev/shm holds its ranks' staged state,
        else None, and every rank saves blocking from then on (they must agree: the two kinds of save
        run different collectives). A short /dev/shm would otherwise end the run at that save with
        SIGBUS or ENOSPC from shared memory (a container's default is 64 MiB)."""
        short = staging_shortfall(shm_free_bytes(), state_bytes(sd), int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        [nodes_short] = all_reduce_sum([float(short is not None)], self.world)
        if not nodes_short:
            return pool
        if short is not None and os.environ.get("LOCAL_RANK", "0") == "0":
            log.warning(f"checkpoint: {short}; saving blocking instead: give the container a larger /dev/shm "
                        "(--shm-size on Kubernetes and docker) or set checkpoint.async_save=false")
        pool.shutdown(wait=False)
        return None

    def _stager_for(self, model: nn.Module) -> DefaultStager | SharedMemoryStager:
        """The run's one stager, made at its first async save: it keeps its copies between saves
        instead of allocating the whole state again, in shared memory, which the checkpoint process
        reads without another copy, and which it is handed once (on CUDA, DCP's, pinned so the copy
        out runs at full speed; on the CPU, ours, which copies without holding the GIL).

        The copy runs beside the next forward and backward (on CUDA on a stream of its own), where
        they cannot change what it copies: for a model without buffers, whose forward and backward
        read the parameters and write only gradients, which are not saved (BatchNorm's running
        statistics change in forward, and so does every buffer DDP broadcasts there). Otherwise it
        copies before ``save`` returns. With the copy beside the step, a lone rank's async save of
        192 MB on 2 cores blocked training 0.050-0.059 s instead of 0.111 s, and 2 ranks' 0.18-0.22 s
        instead of 0.24 s (bench/bench_checkpoint.py); the checkpoint process then cut the rest.
        """
        if self._stager is None:
            cuda = self.world.device.type == "cuda"
            beside = next(iter(model.buffers()), None) is None
            self._stager = (DefaultStager(StagingOptions(use_pinned_memory=True, use_shared_memory=True,
                                                         use_async_staging=beside, use_non_blocking_copy=True))
                            if cuda else SharedMemoryStager(beside))
        return self._stager

    def wait_for_staging(self) -> None:
        """Block until an async save has copied the state: call before the optimizer changes it."""
        if self._staging is not None:
            staging, self._staging = self._staging, None
            staging.result()

    def _save_in_background(self, staged: STATE_DICT_TYPE | Future[STATE_DICT_TYPE], writer: Any, step: int,
                            path: str, contents: list[str]) -> None:
        """Write and commit a staged state off the training process: planning, serializing and
        writing run in this rank's checkpoint process (train.checkpoint_process, started at the first
        async save), so they take no GIL from training. A world of one writes from this thread."""
        if isinstance(staged, Future):
            staged = staged.result()
        self._uncommit(path)
        if self._async_group is None:
            dcp.save(staged, storage_writer=writer, planner=save_planner(), no_dist=True)
        else:
            if self._process is None:
                self._process = CheckpointProcess()
                self._process.start(self._async_group)
            self._process.save(staged, writer, save_planner())
        self._commit(step, path, contents)

    def _uncommit(self, path: str) -> None:
        """On rank 0, before a save writes ``path``: an earlier commit there is withdrawn first (a run
        resumed from an earlier step of its own folder saves over its later ones). No rank writes
        before rank 0 has joined the save's first collective, which it does after this."""
        if self.world.is_main and self.store.uncommit(path):
            log.warning(f"checkpoint: saving over {self.store.display(path)}, committed before: it is "
                        "withdrawn, and committed again once this save is written")

    def _commit(self, step: int, path: str, contents: list[str]) -> None:
        self.saved_step = step
        if not self.world.is_main:
            return
        if (os.environ.get(KILL_BEFORE_COMMIT_ENV) == str(step)
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)
        manifest = {
            "step": step,
            "world_size": self.world.world_size,
            "contents": [k for k in contents if not k.startswith("rng_rank")],
            "torch": torch.__version__,
            "gangrun": _version(),
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": self.config_toml,
        }
        self.store.commit(path, manifest)
        log.info(f"checkpoint: committed {self.store.display(path)}")
        if self._prune_pool is not None:
            self._prune_pool.submit(self._prune, step)

    def _prune(self, newest: int) -> None:
        try:
            removed = self.store.prune(self.cfg.keep, newest)
        except OSError as err:
            log.warning(f"checkpoint: could not delete old checkpoints in {self.store.url}: {err}")
            return
        if removed:
            log.info(f"checkpoint: deleted steps {', '.join(map(str, removed))} (keep {self.cfg.keep})")

    def wait(self) -> None:
        """Block until the save in flight, if any, is committed; re-raise its failure."""
        self.wait_for_staging()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    def close(self) -> None:
        """Finish the save in flight and the pruning, then stop the background threads."""
        try:
            self.wait()
        finally:
            for pool in (self._async_pool, self._prune_pool):
                if pool is not None:
                    pool.shutdown(wait=True)
            if self._process is not None:
                self._process.close()
            if self._stager is not None:
                self._stager.close()
            if self._async_group is not None:
                dist.destroy_process_group(self._async_group)
                self._async_group = None

    def abandon(self) -> None:
        """On an exception: stop taking work and do not wait; an uncommitted save is never loaded."""
        for pool in (self._async_pool, self._prune_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        if self._process is not None:
            self._process.abandon()
