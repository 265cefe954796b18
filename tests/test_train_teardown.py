"""Teardown: on any exception the loop's parts close, and the model is gone before the process group is."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import train.program
from train import loop
from train.config import load_config
from train.distributed import init_world
from train.metrics import Metrics

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
DIGITS = ["train.max_steps=6", "train.global_batch_size=32", "train.micro_batch_size=16", "train.log_every=1",
          "train.eval_every=0", "checkpoint.every=1", "checkpoint.async_save=true", "checkpoint.keep=0",
          "train.record_samples=true"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class Boom(RuntimeError):
    pass


def open_files_under(folder: Path) -> list[str]:
    paths = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            paths.append(target)
    return paths


def checkpoint_threads(timeout: float = 30) -> list[str]:
    """Background checkpoint threads still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [t.name for t in threading.enumerate() if t.name.startswith("checkpoint-")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def fail_at_step(monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    after_step = Metrics.after_step

    def failing_after_step(self: Metrics, step: int, *args: Any) -> None:
        after_step(self, step, *args)
        if step == failing:
            raise Boom("a rank's step failed")  # with an async save of the step before in flight

    monkeypatch.setattr(Metrics, "after_step", failing_after_step)


def test_a_failure_mid_training_still_closes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    fail_at_step(monkeypatch, 3)
    with pytest.raises(Boom):
        loop.fit(load_config("digits", [*DIGITS, f"output_dir={tmp_path}"]), init_world("cpu"))
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before, "stop-signal handlers left installed"
    # A save in flight is not waited for, but its thread ends on its own, and nothing stays open.
    assert checkpoint_threads() == [], "checkpoint threads left running"
    assert open_files_under(tmp_path) == [], "metrics, sample or checkpoint files left open"
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3


@pytest.mark.parametrize("fails", [False, True])
def test_the_model_is_freed_before_the_process_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fails: bool) -> None:
    # close_world() destroys the process group; DDP's reducer or FSDP must be gone by then, or gloo
    # can deadlock at exit (pytorch#56297; see train.distributed.close_world).
    models: list[weakref.ref[nn.Module]] = []
    alive_at_close: list[bool] = []
    wrap_model = loop.wrap_model

    def recording_wrap(*args: Any, **kwargs: Any) -> nn.Module:
        model = wrap_model(*args, **kwargs)
        models.append(weakref.ref(model))
        return model

    def close_world() -> None:
        gc.collect()  # as the real one does first
        alive_at_close.append(models[0]() is not None)

    monkeypatch.setattr(loop, "wrap_model", recording_wrap)
    monkeypatch.setattr(train.program, "close_world", close_world)
    if fails:
        fail_at_step(monkeypatch, 2)
    argv = ["--config", "digits", *DIGITS, "checkpoint.async_save=false", f"output_dir={tmp_path}"]
    if fails:
        with pytest.raises(Boom):
            train.program.main(argv)
    else:
        assert train.program.main(argv) == 0
    assert alive_at_close == [False]
