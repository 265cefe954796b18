"""Prints what progress reporting (train/progress.py) costs a step: the time spent in ``step_done``, with its
writes at their real rate, over the step time, for a fast and a typical CPU step. For a person to read.

usage: python bench/bench_progress.py [--steps N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.progress import Progress


def overhead(step_s: float, steps: int, folder: str) -> tuple[float, float]:
    """(fraction of the loop spent reporting, microseconds per step) over ``steps`` busy steps."""
    progress = Progress({"GANGRUN_PROGRESS_DIR": folder, "RANK": "0"})
    progress.phase("train", 0)
    spent = 0.0
    started = time.perf_counter()
    for step in range(1, steps + 1):
        until = time.perf_counter() + step_s
        while time.perf_counter() < until:
            pass
        before = time.perf_counter()
        progress.step_done(step, step_s, step_s * 0.8)
        spent += time.perf_counter() - before
    total = time.perf_counter() - started
    progress.close()
    return spent / total, spent / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for step_ms in (1.0, 10.0):
            fraction, per_step_us = overhead(step_ms / 1e3, args.steps, folder)
            print(f"progress reporting, {step_ms:g} ms steps: {fraction * 100:.3f} % of the loop "
                  f"({per_step_us:.1f} us per step; goal < 1 %)")


if __name__ == "__main__":
    main()
