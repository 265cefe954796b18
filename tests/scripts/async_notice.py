"""Two async saves on every rank, with Slurm's notice (SIGUSR2) sent to each rank's checkpoint process between them.

usage: torchrun ... async_notice.py OUTPUT_DIR
Prints one line per rank: the checkpoint processes it signalled, their blocked-signal masks, and the
steps committed after the second save. Importable under spawn: the work runs under __main__ only.
"""

import os
import signal
import sys
from pathlib import Path


def checkpoint_processes() -> list[int]:
    """This process's children started by multiprocessing's spawn (the checkpoint process)."""
    me = f"PPid:\t{os.getpid()}\n"
    found = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if me in status and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def blocked_mask(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for {pid}")


def main() -> None:
    from train.checkpoint import Checkpointer
    from train.config import load_config
    from train.distributed import close_world, init_world
    from train.loop import build_run

    output = sys.argv[1]
    cfg = load_config("digits", ["checkpoint.async_save=true", "checkpoint.resume=never", f"output_dir={output}"])
    world = init_world("auto")
    run = build_run(cfg, world)
    saver = Checkpointer(cfg, world)
    run.parts.state.step = 1
    saver.save(run.parts, blocking=False)
    saver.wait()
    pids = checkpoint_processes()
    masks = [blocked_mask(pid) for pid in pids]
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    run.parts.state.step = 2
    saver.save(run.parts, blocking=False)
    saver.close()
    steps = sorted(p.name for p in Path(cfg.checkpoint_dir).iterdir() if (p / "commit.json").exists())
    shown = ",".join(hex(mask) for mask in masks)
    # One write: torchrun starts workers with -u, where print writes the text and its newline apart,
    # and the two ranks' lines ran together on the shared pipe.
    os.write(1, f"rank {world.rank}: signalled {len(pids)} masks {shown} committed {' '.join(steps)}\n".encode())
    del run, saver
    close_world()


if __name__ == "__main__":
    main()
