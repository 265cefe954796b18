"""Helpers for checkpoint tests: start real runs, find and signal their workers, read checkpoints back."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.conftest import BIN
from train.config import load_config
from train.distributed import init_world
from train.loop import fit


@dataclass
class Run:
    """A started ``gangrun run`` and the file its output goes to."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            return self.proc.wait(timeout), self.output()
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (gangrun forwards it and stops its agents), then SIGKILL: no run outlives its test."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def gangrun(nproc: int, overrides: list[str], env: dict[str, str], cwd: Path, *flags: str,
            config: str = "digits") -> Run:
    """Start ``gangrun run -m train`` on ``nproc`` ranks; output goes to ``cwd/gangrun-<n>.log``."""
    log = cwd / f"gangrun-{len(list(cwd.glob('gangrun-*.log')))}.log"
    argv = [str(BIN / "gangrun"), "run", "--nproc-per-node", str(nproc), *flags, "-m", "train",
            "--config", config, *overrides]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
    return Run(proc, log)


def run_ok(nproc: int, overrides: list[str], env: dict[str, str], cwd: Path, *flags: str,
           config: str = "digits") -> str:
    code, output = gangrun(nproc, overrides, env, cwd, *flags, config=config).finish()
    assert code == 0, output[-4000:]
    return output


def run_in_process(overrides: list[str], config: str = "digits") -> str | None:
    """A world of one in this process: fast for single-process references and 2->1 resumes.
    Returns what stopped it (a signal's name), or None when it trained to the end."""
    return fit(load_config(config, overrides), init_world("cpu"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after the parenthesised command, which may hold spaces) is the parent pid.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def worker_pid(root: int, rank: int, timeout: float = 120) -> int:
    """The pid of the torchrun worker with global rank ``rank`` below process ``root``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo = [root]
        while todo:
            pid = todo.pop()
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b"".join(environ):
                return pid
            todo += _children(pid)
        time.sleep(0.05)
    raise TimeoutError(f"no rank {rank} worker under pid {root}")


def wait_for_step(samples_file: Path, step: int, run: Run, timeout: float = 300) -> None:
    """Poll a rank's recorded samples until it has trained ``step`` steps."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if samples_file.exists():
            lines = samples_file.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        if run.proc.poll() is not None:
            raise AssertionError(f"run ended ({run.proc.returncode}) before step {step}:\n{run.output()[-4000:]}")
        time.sleep(0.02)
    run.stop()
    raise TimeoutError(f"step {step} not reached")


def samples_by_step(output_dir: Path, rank: int) -> dict[int, list[int]]:
    """Step -> the sample indices rank ``rank`` trained on; a step replayed after a crash must repeat exactly."""
    steps: dict[int, list[int]] = {}
    for line in (output_dir / "samples" / f"rank{rank}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["step"] in steps:
            assert steps[row["step"]] == row["indices"], f"rank {rank} replayed step {row['step']} differently"
        steps[row["step"]] = row["indices"]
    return steps


def global_samples(output_dir: Path, world: int) -> dict[int, set[int]]:
    """Step -> the union of all ranks' sample indices: the global batch, whatever the world size."""
    union: dict[int, set[int]] = defaultdict(set)
    for rank in range(world):
        for step, indices in samples_by_step(output_dir, rank).items():
            union[step].update(indices)
    return dict(union)


def read_checkpoint(step_dir: Path, scratch: Path) -> dict:
    """A DCP checkpoint folder as one nested dict in this process (weights_only load)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / f"{step_dir.parent.name}-{step_dir.name}-{os.getpid()}-{time.monotonic_ns()}.pt"
    dcp_to_torch_save(str(step_dir), str(out))
    return torch.load(out, weights_only=True)


def assert_models_equal(a: dict, b: dict, exact: bool = True) -> None:
    assert sorted(a["model"]) == sorted(b["model"])
    for key in a["model"]:
        if exact:
            assert torch.equal(a["model"][key], b["model"][key]), f"model.{key} differs"
        else:
            torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5, msg=key)


def committed_steps(checkpoint_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in checkpoint_dir.glob("step-*/commit.json"))
