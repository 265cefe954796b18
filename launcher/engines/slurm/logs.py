"""A Slurm job's log files as node- and rank-prefixed lines, read once or followed until the job ends."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from launcher.contract import rank_of

# How often a followed job's files are read; reading files costs the controller nothing.
READ_EVERY_S = 0.5
BATCH = "batch"


def source_name(path: Path) -> str:
    """``42.node1.log`` -> ``node1``; ``42.batch.log`` -> ``batch``."""
    return path.name.split(".", 1)[1].removesuffix(".log")


def prefixed(source: str, lines: Iterable[str], rank: int | None) -> Iterator[str]:
    """``[node1] [rank0]: ...``; with ``rank``, only that global rank's lines."""
    for line in lines:
        if rank is None or rank_of(line) == rank:
            yield f"[{source}] {line}"


def read_lines(paths: list[Path], rank: int | None = None) -> Iterator[str]:
    """Every line so far, file by file: the batch log first, then each node."""
    for path in paths:
        if path.is_file():
            yield from prefixed(source_name(path), path.read_text(errors="replace").splitlines(), rank)


def follow_lines(
    paths: Callable[[], list[Path]],
    rank: int | None,
    done: Callable[[], bool],
    first_poll_s: float,
    max_poll_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[str]:
    """New complete lines as they appear (nodes' files may appear late), until ``done()`` says the
    job ended; ``done`` is asked at growing intervals, from ``first_poll_s`` up to ``max_poll_s``,
    and again from ``first_poll_s`` when the batch log gains a line."""
    offsets: dict[Path, int] = {}
    interval, next_check = first_poll_s, clock() + first_poll_s
    while True:
        finished = False
        if clock() >= next_check:
            finished = done()
            interval = min(interval * 2, max_poll_s)
            next_check = clock() + interval
        for path in paths():
            if not path.is_file():
                continue
            with path.open("rb") as f:
                f.seek(offsets.get(path, 0))
                chunk = f.read()
            # Hold back a partial last line until its newline arrives (or the job has ended).
            complete = chunk if finished else chunk[:chunk.rfind(b"\n") + 1]
            offsets[path] = offsets.get(path, 0) + len(complete)
            if complete and source_name(path) == BATCH:
                # The batch script speaks at a run's start, requeue and end: check now, then soon.
                interval, next_check = first_poll_s, clock()
            yield from prefixed(source_name(path), complete.decode(errors="replace").splitlines(), rank)
        if finished:
            return
        time.sleep(READ_EVERY_S)
