"""A checkpoint's new files through the page cache vs past it (train/direct_io.py), at a training cadence.

Two processes at once (as two ranks of a node) each write a new 96 MB file with fsync, pause, and
write the next, deleting all but the last two as pruning does: once through a buffered file (what
DCP's writer does) and once through DirectFile (what ours does), in turns. Back-to-back saves, as in
bench_checkpoint.py, reuse the pages the last pruning freed; with a pause between them the kernel
allocates page cache from memory not touched lately, which on some VMs (here: a balloon with free
page reporting) costs more than the disk. Prints each side's median wall and CPU time per file and
their ratio. Nothing here asserts.

usage: python bench/bench_page_cache.py [--repeats R] [--pause S] [--mb MB]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.direct_io import DirectFile

PIECE = 3 << 20  # bytes per write() call: torch.save writes a storage in one call


def buffered(path: str, data: memoryview) -> None:
    with open(path, "wb") as file:
        for start in range(0, data.nbytes, PIECE):
            file.write(data[start:start + PIECE])
        file.flush()
        os.fsync(file.fileno())


def direct(path: str, data: memoryview) -> None:
    with DirectFile(path) as file:
        for start in range(0, data.nbytes, PIECE):
            file.write(data[start:start + PIECE])


def writer(rank: int, folder: str, how: str, args: argparse.Namespace, barrier: Any,
           results: Any) -> None:
    write: Callable[[str, memoryview], None] = direct if how == "direct" else buffered
    data = memoryview(bytearray(os.urandom(1 << 20) * args.mb))
    times = []
    for repeat in range(args.repeats + 1):  # the first is a warm-up
        time.sleep(args.pause)
        barrier.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        write(f"{folder}/{how}-{rank}-{repeat}", data)
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
        if repeat >= 2:
            os.unlink(f"{folder}/{how}-{rank}-{repeat - 2}")
    results.put(times[1:])


def measure(how: str, args: argparse.Namespace, folder: str) -> tuple[float, float]:
    """Median wall and CPU seconds per file over both processes' repeats."""
    barrier = multiprocessing.Barrier(2)
    results: multiprocessing.Queue[list[tuple[float, float]]] = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=writer, args=(rank, folder, how, args, barrier, results))
             for rank in range(2)]
    for proc in procs:
        proc.start()
    times = [t for _ in procs for t in results.get()]
    for proc in procs:
        proc.join()
    return statistics.median(w for w, _ in times), statistics.median(c for _, c in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds between saves")
    parser.add_argument("--mb", type=int, default=96, help="MB per file")
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"buffered": [], "direct": []}
    with tempfile.TemporaryDirectory(prefix="bench-page-cache-", dir=os.environ.get("TMPDIR", "/tmp")) as folder:
        for how in ("buffered", "direct", "direct", "buffered"):
            figures[how].append(measure(how, args, folder))
    wall = {how: statistics.median(w for w, _ in runs) for how, runs in figures.items()}
    cpu = {how: statistics.median(c for _, c in runs) for how, runs in figures.items()}
    print(f"2 processes, a new {args.mb} MB file each with fsync, {args.pause:g} s apart, medians of "
          f"{2 * args.repeats} files per side in 2 turns")
    for how in ("buffered", "direct"):
        print(f"  {how:<9} {wall[how]:.3f} s wall, {cpu[how]:.3f} s CPU per file")
    print(f"  buffered / direct: {wall['buffered'] / wall['direct']:.2f} x the wall time, "
          f"{cpu['buffered'] / cpu['direct']:.1f} x the CPU")


if __name__ == "__main__":
    main()
