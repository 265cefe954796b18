"""Prints, side by side in one run: the training program's steps/s vs a bare DDP loop, and gangrun's start-up
cost over bare torchrun. Ratios for a person to read; nothing here asserts.

usage: python bench/bench_loop.py [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": tempfile.mkdtemp()}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ours_steps_per_s(steps: int, warmup: int, out: Path) -> float:
    subprocess.run([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", "-m", "train", "--config", "digits",
                    f"train.max_steps={steps}", f"train.log_every={warmup}", "train.eval_every=0",
                    "metrics.plot=false", "checkpoint.every=0", f"output_dir={out}"],
                   check=True, env=ENV, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Rows after the first window are steady state; samples/s over a window -> steps/s. Periodic
    # checkpoints are off (checkpoint.every=0: only the final save, after the last window): the bare
    # loop saves nothing, and bench_checkpoint.py measures saving.
    windows = [r["samples_per_s"] / 64 for r in rows if "samples_per_s" in r][1:]
    return statistics.mean(windows)


def bare_steps_per_s(steps: int, warmup: int) -> float:
    result = subprocess.run([str(BIN / "torchrun"), "--nproc-per-node", "2", f"--master-port={free_port()}",
                             str(HERE / "bare_ddp.py"), str(steps), str(warmup)],
                            env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bare DDP loop exited {result.returncode}:\n{result.stderr[-3000:]}")
    match = re.search(r"bare steps/s ([\d.]+)", result.stdout)
    if match is None:
        raise SystemExit(f"bare DDP loop printed no steps/s:\n{result.stdout[-3000:]}")
    return float(match.group(1))


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=ENV, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warmup = 20
    ours, bare, start_ours, start_bare = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            ours.append(ours_steps_per_s(args.steps, warmup, Path(tmp) / f"run{i}"))
            bare.append(bare_steps_per_s(args.steps, warmup))
            start_ours.append(wall([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", str(HERE / "first_step.py")]))
            start_bare.append(wall([str(BIN / "torchrun"), "--nproc-per-node", "2", f"--master-port={free_port()}",
                                    str(HERE / "first_step.py")]))
    o, b = statistics.median(ours), statistics.median(bare)
    so, sb = statistics.median(start_ours), statistics.median(start_bare)
    print(f"digits CNN, 2 gloo ranks on CPU, global batch 64, medians of {args.repeats} interleaved runs")
    print(f"steps/s      gangrun train   {o:8.2f}   bare DDP loop {b:8.2f}   ratio {o / b:.3f}  (goal >= 0.98)")
    print(f"first step   gangrun run     {so:8.2f}s  bare torchrun {sb:8.2f}s  extra {so - sb:+.2f}s (goal <= +0.5 s)")


if __name__ == "__main__":
    main()
