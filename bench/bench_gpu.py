"""GPU rows: the training program against a plain hand-written loop on one GPU, for GPT-2 124M and ResNet-50, and
the program's MFU.

Each workload runs `python -m train --config PRESET` (one process, a world of one) and its plain loop
(bench/plain_gpt.py, bench/plain_resnet.py: the same model, batch, precision, compile and optimizer
settings), interleaved: ours, plain, ours, plain, ... Ours is read from its metrics.jsonl, each
logged window's tokens (or images) per second per device after the first ``--skip-windows`` windows
(compilation, warm-up); the plain loop prints its own rate after as many warm-up steps. A row holds
the median of ours over the median of the plain loop. Without a GPU every row is "not run" (value
None, "no GPU here") and the script exits 0 at once. Nothing here asserts.

usage: python bench/bench_gpu.py [--repeats R] [--steps N] [--only gpt|resnet] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/bench_gpu.py` puts bench/ itself on sys.path; its modules are named from the root.
sys.path.insert(0, str(REPO))

from bench.results import Row, report  # noqa: E402

GPT_RATIO = "GPU: GPT-2 124M tokens/s, ours / plain loop"
GPT_MFU = "GPU: GPT-2 124M MFU"
RESNET_RATIO = "GPU: ResNet-50 images/s, ours / plain loop"
LOG_EVERY = 5


@dataclass(frozen=True)
class Workload:
    """One model measured both ways: the preset, its plain loop, and the overrides both runs take."""

    key: str
    preset: str
    plain: str
    unit: str
    overrides: tuple[str, ...]
    # In words, for the row's detail.
    shape: str


WORKLOADS = (
    # 4 micro-steps of 16 x 1024 tokens per optimizer step: accumulation is measured too.
    Workload("gpt", "gpt2-small", "plain_gpt.py", "tokens",
             ("train.global_batch_size=64", "data.fake_eval_size=16"),
             "4 micro-steps of 16 x 1024 tokens, bf16, compiled, fused AdamW, TF32"),
    Workload("resnet", "resnet50", "plain_resnet.py", "images",
             ("train.global_batch_size=256", "data.fake_eval_size=256"),
             "micro-batch 256 at 224x224, bf16, channels_last, compiled, fused SGD, TF32"),
)


@dataclass
class Measured:
    """Every repeat's rate both ways, and ours' MFU per steady window (none where the peak is unknown)."""

    ours: list[float]
    plain: list[float]
    mfu: list[float]


def run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def ours(work: Workload, steps: int, skip: int, out: Path) -> tuple[float, list[float]]:
    """The program's median rate per device over the steady windows, and their MFUs."""
    run([sys.executable, "-m", "train", "--config", work.preset, *work.overrides, f"train.max_steps={steps}",
         f"train.log_every={LOG_EVERY}", "train.eval_every=0", "checkpoint.every=0", "checkpoint.resume=never",
         "metrics.plot=false", f"output_dir={out}"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    key = f"{work.unit}_per_s_per_device"
    steady = [row for row in rows if key in row][skip:]
    if not steady:
        raise SystemExit(f"{work.preset}: no steady windows; use more --steps than {skip * LOG_EVERY}")
    rate = statistics.median(row[key] for row in steady)
    return rate, [row["mfu"] for row in steady if "mfu" in row]


def plain(work: Workload, steps: int, warmup: int) -> float:
    printed = run([sys.executable, str(REPO / "bench" / work.plain), str(steps), str(warmup), *work.overrides])
    match = re.search(rf"plain {work.unit}/s ([\d.]+)", printed)
    if match is None:
        raise SystemExit(f"{work.plain} printed no {work.unit}/s:\n{printed[-3000:]}")
    return float(match.group(1))


def measure(work: Workload, repeats: int, steps: int, skip: int) -> Measured:
    measured = Measured([], [], [])
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            rate, mfu = ours(work, steps, skip, Path(tmp) / f"{work.key}{i}")
            measured.ours.append(rate)
            measured.mfu.extend(mfu)
            measured.plain.append(plain(work, steps, skip * LOG_EVERY))
            print(f"{work.key} repeat {i + 1}/{repeats}: ours {rate:.0f}, plain {measured.plain[-1]:.0f} "
                  f"{work.unit}/s", flush=True)
    return measured


def ratio_row(name: str, work: Workload, measured: Measured, gpu: str) -> Row:
    o, p = statistics.median(measured.ours), statistics.median(measured.plain)
    return Row(name, o / p, 0.97, ">=", "", f"ours {o:.0f} vs plain {p:.0f} {work.unit}/s on one {gpu}, medians "
               f"of {len(measured.ours)} interleaved runs; {work.shape}",
               raw={"ours": measured.ours, "plain": measured.plain})


def mfu_row(measured: Measured, gpu: str) -> Row:
    if not measured.mfu:
        return Row(GPT_MFU, None, 0.45, ">=", "", f"no bf16 peak known for {gpu} (train/flops.py PEAKS)")
    return Row(GPT_MFU, statistics.median(measured.mfu), 0.45, ">=", "",
               f"ours, median of {len(measured.mfu)} windows on one {gpu}: 6N + 12LHQT FLOPs per token "
               "(train/flops.py) times tokens/s over the dense bf16 peak", raw={"mfu": measured.mfu})


def gpu_rows(only: str | None, repeats: int, steps: int, skip: int) -> list[Row]:
    import torch

    if not torch.cuda.is_available():
        return [Row(name, None, goal, ">=", "", "no GPU here")
                for name, goal in ((GPT_RATIO, 0.97), (GPT_MFU, 0.45), (RESNET_RATIO, 0.97))]
    gpu = torch.cuda.get_device_name()
    rows = []
    for work in WORKLOADS:
        if only not in (None, work.key):
            continue
        measured = measure(work, repeats, steps, skip)
        if work.key == "gpt":
            rows += [ratio_row(GPT_RATIO, work, measured, gpu), mfu_row(measured, gpu)]
        else:
            rows.append(ratio_row(RESNET_RATIO, work, measured, gpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run (default 40)")
    parser.add_argument("--skip-windows", type=int, default=2,
                        help=f"windows of {LOG_EVERY} steps left out as warm-up (default 2)")
    parser.add_argument("--only", choices=[w.key for w in WORKLOADS])
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (bench/results.py)")
    args = parser.parse_args()
    rows = gpu_rows(args.only, args.repeats, args.steps, args.skip_windows)
    report(rows, args.json)


if __name__ == "__main__":
    main()
