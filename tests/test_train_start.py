"""`python -m train` from its first line: a stop while it imports ends it with 75 at once, nothing started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.phases import read_marks
from tests.conftest import child_env
from train.timeline import TIMELINE_ENV


def test_a_stop_while_importing_exits_75_before_the_program_is_imported(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.jsonl"
    env = {**child_env(tmp_path), TIMELINE_ENV: str(timeline)}
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", "digits", f"output_dir={tmp_path / 'out'}"],
                            env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    # "up" is marked once the handlers are in place, before torch is imported (a second or more).
    while not any(m.mark == "up" for m in read_marks(timeline)):
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr
    assert "train: exiting 75 (requeue me): stopped by SIGTERM while importing" in stderr
    assert "program imported" not in {m.mark for m in read_marks(timeline)}
    assert not (tmp_path / "out").exists()
