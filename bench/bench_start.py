"""The start at bare speed: `gangrun run` vs bare torchrun on the smallest DDP job, interleaved, every repeat held
to the goal (not only the median).

Each repeat times ``gangrun run --nproc-per-node 2 bench/first_step.py`` and ``torchrun --nproc-per-node 2
--master-port=P bench/first_step.py`` (wall time, start to exit) back to back, alternating which goes
first; the row is the worst repeat's difference. One untimed run of each warms the page cache first.
Each repeat also says how much CPU other work on the machine took meanwhile (bench/machine.py).
Nothing here asserts: a missed goal is printed for a person to read.

usage: python bench/bench_start.py [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/bench_start.py` puts bench/ itself on sys.path; its modules are named from the root.
sys.path.insert(0, str(REPO))

from bench.machine import OthersCpu  # noqa: E402
from bench.results import Row, report, worst  # noqa: E402

BIN = Path(sys.executable).parent
FIRST_STEP = REPO / "bench" / "first_step.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return took


def start_row(repeats: int) -> Row:
    ours_s: list[float] = []
    bare_s: list[float] = []
    others_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": f"{tmp}/mpl", "GANGRUN_HOME": f"{tmp}/home"}

        def ours() -> float:
            return wall([str(BIN / "gangrun"), "run", "--nproc-per-node", "2", str(FIRST_STEP)], env)

        def bare() -> float:
            return wall([str(BIN / "torchrun"), "--nproc-per-node", "2", f"--master-port={free_port()}",
                         str(FIRST_STEP)], env)

        ours(), bare()
        for i in range(repeats):
            others = OthersCpu.start()
            if i % 2 == 0:
                ours_s.append(ours())
                bare_s.append(bare())
            else:
                bare_s.append(bare())
                ours_s.append(ours())
            others_s.append(others.seconds())
            print(f"repeat {i + 1}: gangrun run {ours_s[-1]:.2f} s, bare torchrun {bare_s[-1]:.2f} s, "
                  f"extra {ours_s[-1] - bare_s[-1]:+.2f} s (other work took {others_s[-1]:.1f} CPU s meanwhile)",
                  flush=True)
    extra = [o - b for o, b in zip(ours_s, bare_s, strict=True)]
    detail = (f"gangrun run median {statistics.median(ours_s):.2f} s, bare torchrun median "
              f"{statistics.median(bare_s):.2f} s; extra per repeat " + " ".join(f"{e:+.2f}" for e in extra)
              + f"; other work took up to {max(others_s):.1f} CPU s during a repeat")
    return Row(f"first step: gangrun run - bare torchrun (s), worst of {repeats}", worst(extra, "<="), 0.5, "<=",
               "s", detail, extra, {"gangrun_run_s": ours_s, "bare_torchrun_s": bare_s, "others_cpu_s": others_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the row as JSON (bench/results.py)")
    args = parser.parse_args()
    row = start_row(args.repeats)
    report([row], args.json)


if __name__ == "__main__":
    main()
