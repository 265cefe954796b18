"""`make bench`: every bench script in turn; one table of rows and goals, bench/results/latest.json and latest.png.

Each script measures its figures side by side in its own run and writes its rows (bench/results.py);
this collects them, prints the table for a person to read, and draws each row's value against its
goal. Scripts run one at a time: on a 2-core machine two benchmarks at once would measure each other.
A script that fails is reported as such and the rest still run. Nothing here asserts.

usage: python bench/run_all.py [--quick] [--only NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.results import Row, read_rows  # noqa: E402


@dataclass(frozen=True)
class Script:
    name: str
    argv: tuple[str, ...]
    quick: tuple[str, ...] = ()


SCRIPTS = (
    Script("loop", ("bench_loop.py",), ("--repeats", "3")),
    Script("start", ("bench_start.py",), ("--repeats", "3")),
    Script("recovery", ("bench_recovery.py",), ("--repeats", "3")),
    Script("checkpoint", ("bench_checkpoint.py", "--s3"), ("--repeats", "3")),
    Script("activation_checkpointing", ("bench_activation_checkpointing.py",)),
    Script("gpu", ("bench_gpu.py",)),
)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {gpu}")


def run_script(script: Script, quick: bool, folder: Path) -> tuple[list[Row], float, str | None]:
    out = folder / f"{script.name}.json"
    argv = [sys.executable, str(HERE / script.argv[0]), *script.argv[1:], *(script.quick if quick else ()),
            "--json", str(out)]
    started = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0 or not out.is_file():
        return [], seconds, f"{script.name}: exited {result.returncode}: {(result.stderr or result.stdout)[-1500:]}"
    return read_rows(out), seconds, None


def score(row: Row) -> float:
    """How far a measured row is past its goal, right of 1 being good for both kinds of goal: value/goal
    for a floor, goal/value for a ceiling (a value at or under zero under a positive ceiling counts as
    3), shown up to 3."""
    assert row.value is not None
    if row.compare == ">=":
        return min(row.value / row.goal, 3.0)
    return min(row.goal / row.value, 3.0) if row.value > 0 else 3.0


def chart(rows: list[Row], path: Path, title: str) -> None:
    """Each measured row as a bar: its value over its goal (1.0 = just meets it), green where met."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if row.value is not None]
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(measured) + 1.5))
    scores = [score(row) for row in measured]
    ax.barh(range(len(measured)), scores, color=["tab:green" if row.met else "tab:red" for row in measured])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(measured)), [row.name for row in measured], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("past its goal: value / goal for a floor, goal / value for a ceiling (1: just meets it; up to 3)")
    ax.set_title(title, fontsize=9)
    for i, row in enumerate(measured):
        ax.text(scores[i], i, f" {row.value:.3g}{row.unit} (goal {row.compare} {row.goal:g})", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a first look")
    parser.add_argument("--only", nargs="+", choices=[s.name for s in SCRIPTS])
    parser.add_argument("--out", default=str(HERE / "results"), help="where latest.json and latest.png go")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failures: list[str] = []
    timings: dict[str, float] = {}
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for script in SCRIPTS:
            if args.only and script.name not in args.only:
                continue
            print(f"bench: {script.name} ...", flush=True)
            got, seconds, failure = run_script(script, args.quick, Path(tmp))
            timings[script.name] = round(seconds, 1)
            rows += got
            for row in got:
                print("  " + row.line(), flush=True)
            if failure:
                failures.append(failure)
                print("  FAILED " + failure, flush=True)
    about = machine()
    print(f"\ngangrun bench, {started:%Y-%m-%d %H:%M} UTC, {about}")
    for row in rows:
        print(row.line())
    for failure in failures:
        print("FAILED " + failure)
    met = sum(row.met is True for row in rows)
    print(f"{met} of {sum(row.met is not None for row in rows)} measured rows meet their goal; "
          f"{sum(row.met is None for row in rows)} not run here")
    (out / "latest.json").write_text(json.dumps({
        "time": started.isoformat(timespec="seconds"), "machine": about, "seconds": timings,
        "failures": failures, "rows": [row.to_json() for row in rows]}, indent=1) + "\n")
    chart(rows, out / "latest.png", f"gangrun bench {started:%Y-%m-%d}, {about}")
    print(f"wrote {out / 'latest.json'} and {out / 'latest.png'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
