"""Shared fixtures: the project's virtualenv programs and a clean environment for child runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def child_env(tmp: Path) -> dict[str, str]:
    """Environment for running `gangrun`/`python -m train` as a user would: no inherited job state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GANGRUN_", "RANK", "LOCAL_RANK",
                                                                   "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MPLCONFIGDIR"] = str(tmp / "mpl")
    return env


@pytest.fixture
def gangrun_env(tmp_path: Path) -> dict[str, str]:
    return child_env(tmp_path)


def gangrun(*args: str, env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `gangrun` CLI as a user would, capturing its output."""
    return subprocess.run([str(BIN / "gangrun"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def plant_decoys(folder: Path) -> None:
    """A user's own train.py and launcher/ package in ``folder``: neither may ever run in place of ours."""
    (folder / "train.py").write_text("raise SystemExit('DECOY: the user train.py ran')\n")
    (folder / "launcher").mkdir(exist_ok=True)
    (folder / "launcher" / "__init__.py").write_text("raise SystemExit('DECOY: the user launcher/ ran')\n")
    (folder / "launcher" / "agent.py").write_text("raise SystemExit('DECOY: the user launcher/agent.py ran')\n")
