"""The program behind `python -m train`: read the config, join the world, train, exit with the contract's code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from train import testhooks
from train.arguments import parse_args
from train.checkpoint import CheckpointSpaceError
from train.config import ConfigError, accumulation_steps, changed_keys, load_config
from train.contract import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_REQUEUE
from train.distributed import all_gather_objects, close_world, init_world
from train.loop import fit
from train.metrics import log, setup_logging
from train.notice import NOTICE
from train.progress import Progress
from train.timeline import mark
from train.world import describe, expected, lone_copy_problem, me, world_problem


@record
def main(argv: list[str] | None = None, progress: Progress | None = None) -> int:
    """The program; ``progress`` is this rank's report to its agent, made before torch was imported."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(rank)
    progress = progress or Progress()
    try:
        return run(args, rank, progress)
    finally:
        progress.close()


def run(args: argparse.Namespace, rank: int, progress: Progress) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        accumulation_steps(cfg.train, int(os.environ.get("WORLD_SIZE", "1")))
        # Where the agent writes a hang's evidence: beside the run's own outputs.
        progress.fields["out"] = os.path.abspath(cfg.output_dir)
    except ConfigError as err:
        # Every rank reads the same config and fails the same way; one of them says so.
        if rank == 0:
            print(f"train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    lone = lone_copy_problem()
    if lone is not None:
        print(f"train: error: world: {lone}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if NOTICE.received:
        # Stopped before joining the world: nothing was trained since the newest commit.
        log.info(f"exiting {EXIT_REQUEUE} (requeue me): stopped by {NOTICE.name} while starting")
        return EXIT_REQUEUE
    world = init_world(cfg.train.device)
    mark("process group")
    try:
        # Every rank says where it is, once: a world other than the one asked for stops here, on every rank.
        members = all_gather_objects(me(), world)
        problem = world_problem(members, expected())
        if problem is not None:
            if world.is_main:
                print(f"train: error: world: {problem} ({describe(members)}); check the allocation and "
                      "--nnodes/--nproc-per-node", file=sys.stderr)
            return EXIT_BAD_INPUT
        if world.is_main:
            log.info(f"world: {describe(members)}")
            output = Path(cfg.output_dir)
            output.mkdir(parents=True, exist_ok=True)
            (output / "config.toml").write_text(cfg.to_toml())
            # The whole config is in the file; a person reads only what this run changed.
            changes = changed_keys(cfg, load_config(args.config, []))
            log.info(f"config: {output / 'config.toml'}; preset {args.config or 'defaults'}"
                     + (f", with {len(changes)} change{'s' if len(changes) != 1 else ''}:" if changes else
                        ", unchanged") + "".join(f"\n  {line}" for line in changes))
        # fit() holds the model and its DDP/FSDP wrapper; they are freed when it returns, before
        # the process group is (see close_world).
        stopped_by = fit(cfg, world, progress=progress)
    except BaseException as err:
        # The failed frames hold the model, and with it DDP's reducer: let them go before the
        # process group does (see close_world). The traceback keeps its lines for the error report.
        traceback.clear_frames(err.__traceback__)
        if not isinstance(err, (ConfigError, CheckpointSpaceError)):
            raise
        if world.is_main:
            print(f"train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, ConfigError) else EXIT_FAILED
    finally:
        progress.phase("teardown")
        testhooks.linger()
        close_world()
    # A stop noted after the run finished (its last checkpoint committed) changes nothing: exit 0.
    if stopped_by is not None:
        log.info(f"exiting {EXIT_REQUEUE} (requeue me): stopped by {stopped_by} with the checkpoint committed")
        return EXIT_REQUEUE
    return EXIT_OK
