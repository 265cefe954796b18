"""Activation checkpointing on the CPU: a small GPT's peak memory over a training step, and its step time, with
``train.activation_checkpointing`` (train/memory.py) over without.

Each measurement is its own process (with, without, with, ... interleaved), which builds the model
(train.models.TinyGPT: 8 layers, d_model 128, 8 x 256 tokens), takes one warm-up step, then resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``) and takes ``--steps`` more. Its memory is the
peak RSS over those steps less the RSS before them: activations, gradients and temporaries, the
weights and optimizer state excluded. For memory, glibc is told to map every allocation over 64 KiB
on its own (``MALLOC_MMAP_THRESHOLD_``), so memory freed is returned at once and RSS follows what
torch holds; that costs a page fault per allocation, and checkpointing allocates more, so step times
come from other processes with glibc's defaults. Nothing here asserts.

usage: python bench/bench_activation_checkpointing.py [--repeats R] [--steps N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/bench_activation_checkpointing.py` puts bench/ itself on sys.path; modules are named from the root.
sys.path.insert(0, str(REPO))

from bench.results import Row, report  # noqa: E402

SHAPE = ("model.n_layer=8", "model.n_head=4", "model.d_model=128", "model.seq_len=256", "model.vocab_size=256")
BATCH = 8
TIME_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
MEMORY_ENV = {**TIME_ENV, "MALLOC_MMAP_THRESHOLD_": "65536"}


def status_kib(key: str) -> int:
    """A field of /proc/self/status, in KiB (VmRSS: resident now, VmHWM: the peak since the last reset)."""
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match is not None, key
    return int(match.group(1))


def probe(checkpointed: bool, steps: int) -> None:
    """In its own process: print this mode's step memory (MiB) and seconds per step as one JSON line."""
    import torch
    import torch.nn.functional as F

    from train.config import load_config
    from train.memory import checkpoint_activations
    from train.models import TinyGPT

    cfg = load_config("gpt-tiny", list(SHAPE)).model
    torch.manual_seed(0)
    model = TinyGPT(cfg)
    if checkpointed:
        checkpoint_activations(model)
    optimizer = torch.optim.AdamW(model.parameters())
    tokens = torch.randint(0, cfg.vocab_size, (BATCH, cfg.seq_len + 1))

    def step() -> None:
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    before = status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - started) / steps
    print(json.dumps({"step_mib": (status_kib("VmHWM") - before) / 1024, "step_s": seconds}))


def measured(checkpointed: bool, steps: int, env: dict[str, str]) -> dict[str, float]:
    result = subprocess.run([sys.executable, __file__, "--probe", "on" if checkpointed else "off",
                             "--steps", str(steps)], capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"the probe exited {result.returncode}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def rows(repeats: int, steps: int) -> list[Row]:
    mib: dict[bool, list[float]] = {True: [], False: []}
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for checkpointed in (True, False):
            mib[checkpointed].append(measured(checkpointed, steps, MEMORY_ENV)["step_mib"])
            seconds[checkpointed].append(measured(checkpointed, steps, TIME_ENV)["step_s"])
    memory_ratios = [on / off for on, off in zip(mib[True], mib[False], strict=True)]
    time_ratios = [on / off for on, off in zip(seconds[True], seconds[False], strict=True)]
    shape = f"TinyGPT {', '.join(s.split('.')[1] for s in SHAPE)}, batch {BATCH}, fp32, 1 thread"
    return [
        Row("activation checkpointing: peak memory with / without (gpt, CPU)", statistics.median(memory_ratios),
            0.5, "<=", "", f"{statistics.median(mib[True]):.0f} vs {statistics.median(mib[False]):.0f} MiB peak RSS "
            f"over a step above the RSS before it (own process each, glibc mmap threshold 64 KiB), medians of "
            f"{repeats} interleaved; {shape}", raw={"step_mib": {"with": mib[True], "without": mib[False]}}),
        Row("activation checkpointing: step time with / without (gpt, CPU)", statistics.median(time_ratios),
            1.5, "<=", "", f"{statistics.median(seconds[True]) * 1e3:.0f} vs "
            f"{statistics.median(seconds[False]) * 1e3:.0f} ms per step (glibc's defaults; one more forward per "
            f"block: about 4/3 expected), medians of {repeats} interleaved; {shape}",
            raw={"step_s": {"with": seconds[True], "without": seconds[False]}}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process (default 3)")
    parser.add_argument("--probe", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON (bench/results.py)")
    args = parser.parse_args()
    if args.probe:
        probe(args.probe == "on", args.steps)
        return
    found = rows(args.repeats, args.steps)
    report(found, args.json)


if __name__ == "__main__":
    main()
