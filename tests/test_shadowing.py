"""The programs gangrun starts cannot be shadowed: a train.py and a launcher/ next to the user never run
in their place, while a user's own `-m module` is still found in the working directory, as torchrun finds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import gangrun, plant_decoys

pytestmark = pytest.mark.multiprocess


def test_train_and_the_agent_run_from_a_folder_holding_decoys(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    plant_decoys(tmp_path)
    result = gangrun("run", "--nproc-per-node", "2", "-m", "train", "--config", "digits", "train.max_steps=4",
                     "train.log_every=2", "train.eval_every=0", "metrics.plot=false", "output_dir=out",
                     env=gangrun_env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "DECOY" not in output and "training: world 2" in output
    assert (tmp_path / "out" / "checkpoints" / "step-00000004" / "commit.json").is_file()


def test_a_users_own_module_comes_from_the_working_directory(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "mytask.py").write_text("import os\nprint('mytask rank', os.environ['RANK'], flush=True)\n")
    result = gangrun("run", "--nproc-per-node", "2", "-m", "mytask", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank0]: mytask rank 0" in result.stdout and "[rank1]: mytask rank 1" in result.stdout
