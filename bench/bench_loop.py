"""The training program's steps/s vs a bare hand-written DDP loop (bench/bare_ddp.py), every repeat held to the goal.

Both train the digits CNN on 2 gloo ranks with global batch 64 for ``--steps`` steps and are timed over
the same steps: all but the first third, which is warm-up. Ours is read from its metrics.jsonl (its
log windows, ``train.log_every`` = a third of the steps, so the two timed windows hold every step
after the warm-up and only the two log lines fall outside them); the bare loop times itself. Repeats
are interleaved, alternating which runs first. Nothing here asserts.

usage: python bench/bench_loop.py [--steps N] [--repeats R] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.results import Row, report, worst  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": tempfile.mkdtemp()}
GLOBAL_BATCH = 64


def ours_steps_per_s(steps: int, warmup: int, out: Path) -> float:
    subprocess.run([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", "-m", "train", "--config", "digits",
                    f"train.max_steps={steps}", f"train.log_every={warmup}", "train.eval_every=0",
                    "metrics.plot=false", "checkpoint.every=0", f"output_dir={out}"],
                   check=True, env=ENV, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Periodic checkpoints are off (only the final save, after the last window): the bare loop saves
    # nothing, and bench_checkpoint.py measures saving.
    timed = [r for r in rows if "samples_per_s" in r and r["step"] > warmup]
    seconds = sum(warmup * GLOBAL_BATCH / r["samples_per_s"] for r in timed)
    return warmup * len(timed) / seconds


def bare_steps_per_s(steps: int, warmup: int) -> float:
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
                             str(HERE / "bare_ddp.py"), str(steps), str(warmup)],
                            env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bare DDP loop exited {result.returncode}:\n{result.stderr[-3000:]}")
    match = re.search(r"bare steps/s ([\d.]+)", result.stdout)
    if match is None:
        raise SystemExit(f"bare DDP loop printed no steps/s:\n{result.stdout[-3000:]}")
    return float(match.group(1))


def measure(steps: int, repeats: int) -> Row:
    warmup = steps // 3
    steps = 3 * warmup
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            if i % 2:
                bare.append(bare_steps_per_s(steps, warmup))
                ours.append(ours_steps_per_s(steps, warmup, Path(tmp) / f"run{i}"))
            else:
                ours.append(ours_steps_per_s(steps, warmup, Path(tmp) / f"run{i}"))
                bare.append(bare_steps_per_s(steps, warmup))
    ratios = [o / b for o, b in zip(ours, bare, strict=True)]
    return Row(f"loop: train steps/s / bare DDP loop (digits, 2 gloo ranks), worst of {repeats}",
               worst(ratios, ">="), 0.98, ">=",
               detail="repeats " + " ".join(f"{r:.3f}" for r in ratios)
                      + f"; {steps - warmup} timed steps, ours {min(ours):.0f}-{max(ours):.0f}, "
                        f"bare {min(bare):.0f}-{max(bare):.0f} steps/s",
               repeats=ratios, raw={"ours_steps_per_s": ours, "bare_steps_per_s": bare})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the row here")
    args = parser.parse_args()
    row = measure(args.steps, args.repeats)
    report([row], args.json)


if __name__ == "__main__":
    main()
