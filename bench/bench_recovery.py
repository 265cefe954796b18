"""Recovery in seconds: SIGKILL one of 2 ranks under `gangrun run --max-restarts`, then time every phase up to
the first step after resuming, from the job's own timeline (``$GANGRUN_TIMELINE``, see bench/phases.py).

Each repeat trains the digits CNN on 2 gloo ranks with a checkpoint every 20 steps, kills rank 0 or 1
(alternately) a few steps after the commit of step 60, and lets the run finish: it must exit 0. Beside
each repeat, the time a bare ``python -c 'import torch'`` takes now and the CPU other work took during
the run (bench/machine.py) say how busy the machine was. Nothing here asserts: a missed goal is printed
for a person to read.

usage: python bench/bench_recovery.py [--repeats N] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/bench_recovery.py` puts bench/ itself on sys.path; its modules are named from the root.
sys.path.insert(0, str(REPO))

from bench.machine import OthersCpu  # noqa: E402
from bench.phases import PHASES, Recovery, rank_pids, read_marks, recovery  # noqa: E402
from bench.results import Row, report, worst  # noqa: E402

BIN = Path(sys.executable).parent
TIMELINE_ENV = "GANGRUN_TIMELINE"
STEPS, EVERY, KILL_AFTER_STEP = 300, 20, 60
# After that commit: a few steps (about 8 ms each here), so the kill lands mid-training, not in a save.
KILL_DELAY_S = 0.05
WAIT_S = 180


def torch_import_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - started


def append_mark(timeline: Path, what: str, at: float) -> None:
    with timeline.open("a") as f:
        f.write(f'{{"t": {at}, "who": "bench", "pid": {os.getpid()}, "attempt": 0, "mark": "{what}"}}\n')


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the run never committed {path.parent.name}:\n{log.read_text()[-3000:]}")
        time.sleep(0.01)


def one_recovery(folder: Path, victim: int) -> Recovery:
    """One run, one SIGKILL of rank ``victim``: the restart's phases."""
    timeline, out, log = folder / "timeline.jsonl", folder / "out", folder / "console.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(folder / "mpl"),
           "GANGRUN_HOME": str(folder / "home"), TIMELINE_ENV: str(timeline)}
    argv = [str(BIN / "gangrun"), "run", "--nproc-per-node", "2", "--max-restarts", "3", "-m", "train",
            "--config", "digits", f"train.max_steps={STEPS}", f"checkpoint.every={EVERY}", "train.eval_every=0",
            "metrics.plot=false", f"output_dir={out}"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=folder)
    wait_for(out / "checkpoints" / f"step-{KILL_AFTER_STEP:08d}" / "commit.json", proc, log)
    time.sleep(KILL_DELAY_S)
    pid = rank_pids(read_marks(timeline), 0)[victim]
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    append_mark(timeline, "kill", killed_at)
    try:
        code = proc.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"the run did not end within {WAIT_S} s:\n{log.read_text()[-3000:]}") from None
    if code != 0:
        raise SystemExit(f"the run exited {code} after the kill:\n{log.read_text()[-3000:]}")
    return recovery(read_marks(timeline), killed_at, killed_attempt=0, ranks=2)


def recovery_row(repeats: int) -> Row:
    results: list[Recovery] = []
    floors: list[float] = []
    others_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        for i in range(repeats):
            floors.append(torch_import_s())
            folder = Path(tmp) / f"r{i}"
            folder.mkdir()
            others = OthersCpu.start()
            result = one_recovery(folder, victim=i % 2)
            others_s.append(others.seconds())
            results.append(result)
            steps = "  ".join(f"{name} {s:.2f}" for name, s in result.phases.items())
            print(f"repeat {i + 1}: rank {i % 2} killed: {result.total:.2f} s = {steps}  (bare import torch "
                  f"{floors[-1]:.2f} s; other work took {others_s[-1]:.1f} CPU s during the run)", flush=True)
    totals = [r.total for r in results]
    medians = {name: statistics.median(r.phases[name] for r in results) for name, *_ in PHASES}
    detail = ("median per phase: " + ", ".join(f"{name} {s:.2f}" for name, s in medians.items())
              + f"; bare `import torch` median {statistics.median(floors):.2f} s; other work took up to "
              f"{max(others_s):.1f} CPU s during a run")
    return Row(f"recovery: SIGKILL -> first step after resume (s), worst of {repeats}", worst(totals, "<="),
               3.0, "<=", "s", detail, totals,
               {"median_phases": medians, "phases": [r.phases for r in results], "torch_import_s": floors,
                "others_cpu_s": others_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH", help="also write the row as JSON (bench/results.py)")
    args = parser.parse_args()
    row = recovery_row(args.repeats)
    report([row], args.json)


if __name__ == "__main__":
    main()
