"""Checkpoints on object storage, for real: 2 ranks save to s3:// on a loopback S3 server and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.checkpoint_runs import assert_models_equal, read_checkpoint, run_in_process, run_ok
from tests.s3_server import BUCKET, S3Server
from train.checkpoint_store import METADATA, CheckpointStore

# The `s3_server` fixture (tests/conftest.py) is moto's server on loopback; the ranks run under torchrun.
pytestmark = [pytest.mark.s3, pytest.mark.multiprocess,
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

DIGITS = ["train.global_batch_size=32", "train.micro_batch_size=16", "train.log_every=3", "train.eval_every=0",
          "metrics.plot=false", "checkpoint.every=3", "checkpoint.keep=2"]


def test_save_to_s3_and_resume_from_it(s3_server: S3Server, gangrun_env: dict[str, str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**gangrun_env, **s3_server.env()}
    url = f"s3://{BUCKET}/digits"
    first = run_ok(2, [*DIGITS, "train.max_steps=6", f"output_dir={tmp_path}/a", f"checkpoint.dir={url}"], env,
                   tmp_path)
    assert f"checkpoint: committed {url}/step-00000006" in first
    fs = s3_server.filesystem()
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/digits")) == ["step-00000003", "step-00000006"]
    manifest = json.loads(fs.cat(f"{BUCKET}/digits/step-00000006/commit.json"))
    assert manifest["step"] == 6 and manifest["world_size"] == 2

    # Same command with more steps: resumes from the object store, saves there, prunes there.
    second = run_ok(2, [*DIGITS, "train.max_steps=9", f"output_dir={tmp_path}/a", f"checkpoint.dir={url}"], env,
                    tmp_path)
    assert f"checkpoint: resumed from {url}/step-00000006 (step 6" in second
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/digits")) == ["step-00000006", "step-00000009"]

    # What was loaded from S3 is exactly what was saved there: copied locally, both read the same.
    fs.get(f"{BUCKET}/digits/step-00000006", str(tmp_path / "copy"), recursive=True)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    run_in_process([*DIGITS, "train.max_steps=6", f"output_dir={tmp_path}/b", f"checkpoint.resume={url}/step-00000006"])
    assert_models_equal(read_checkpoint(tmp_path / "b" / "checkpoints" / "step-00000006", tmp_path / "s"),
                        read_checkpoint(tmp_path / "copy", tmp_path / "s"))


def test_uncommit_withdraws_a_commit_on_s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = CheckpointStore(f"s3://{BUCKET}/uncommit")
    path = store.path(3)
    store.fs.pipe_file(f"{path}/{METADATA}", b"metadata")
    store.commit(path, {"step": 3})
    assert store.uncommit(path) is True
    assert store.list_steps().incomplete == [3] and store.uncommit(path) is False
