"""Async saves on real ranks: the checkpoint process survives Slurm's notice, which it leaves to training."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "async_notice.py"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.multiprocess
def test_the_checkpoint_process_blocks_the_notice_and_the_next_async_save_commits(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", str(SCRIPT),
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = re.findall(r"rank (\d): signalled (\d+) masks (\S+) committed (.*)", proc.stdout)
    assert sorted(rank for rank, *_ in lines) == ["0", "1"], proc.stdout[-3000:]
    notice_bit = 1 << (signal.SIGUSR2 - 1)
    for _rank, signalled, masks, committed in lines:
        assert int(signalled) >= 1
        assert all(int(mask, 16) & notice_bit for mask in masks.split(","))
        assert committed.split() == ["step-00000001", "step-00000002"]
