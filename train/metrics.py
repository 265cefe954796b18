"""Rank-0 metrics: log lines, JSON lines, TensorBoard when asked, and a curves.png at the end."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("train")


def setup_logging(rank: int) -> None:
    """INFO on rank 0, WARNING elsewhere: one voice for progress, every rank for trouble."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                        stream=sys.stdout, force=True)


class MetricsWriter:
    """Writes rows only on rank 0; other ranks get a writer that does nothing."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        self._file = None
        self._tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir = output_dir
        self._file = (output_dir / "metrics.jsonl").open("a", buffering=1)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise RuntimeError("metrics.tensorboard=true needs the tensorboard package: "
                                   "pip install 'gangrun[tensorboard]'") from err
            self._tb = SummaryWriter(str(output_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        self._file.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, row["step"])

    def plot(self, metric: str) -> Path | None:
        """Loss and ``metric`` against step, for a person to look at."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
        train = [r for r in self.rows if "loss" in r]
        evals = [r for r in self.rows if metric in r]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train])
        ax_loss.set(xlabel="step", ylabel="train loss", title="training loss")
        ax_metric.plot([r["step"] for r in evals], [r[metric] for r in evals], marker="o")
        ax_metric.set(xlabel="step", ylabel=metric, title=f"eval {metric}")
        fig.tight_layout()
        path = self.output_dir / "curves.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
