"""Which samples each rank trained on, per step: for tests that check a resume sees exactly the same.

Production runs get NoRecorder, which does nothing; `train.record_samples=true` appends one JSON
line per step to ``{output_dir}/samples/rank{R}.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO

import torch


class NoRecorder:
    """The recorder of every run that does not ask for one."""

    def __enter__(self) -> NoRecorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def saw(self, index: torch.Tensor) -> None:
        return None

    def step(self, step: int, epoch: int) -> None:
        return None


class SampleRecorder(NoRecorder):
    def __init__(self, output_dir: Path, rank: int) -> None:
        folder = output_dir / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = (folder / f"rank{rank}.jsonl").open("a", buffering=1)
        self._seen: list[int] = []

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._file.close()

    def saw(self, index: torch.Tensor) -> None:
        self._seen += index.tolist()

    def step(self, step: int, epoch: int) -> None:
        self._file.write(json.dumps({"step": step, "epoch": epoch, "indices": self._seen}) + "\n")
        self._seen = []


def open_recorder(enabled: bool, output_dir: Path, rank: int) -> NoRecorder:
    return SampleRecorder(output_dir, rank) if enabled else NoRecorder()
