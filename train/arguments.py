"""The program's command line, read the same way by a run and by its check mode (no torch here)."""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train",
                                     description="Train a preset or TOML config under torchrun, or alone.")
    parser.add_argument("--config", help="preset name in train/configs (digits, resnet-fake, gpt-tiny) or a TOML file")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="e.g. train.max_steps=50 optim.lr=3e-4 output_dir=runs/x")
    return parser.parse_args(argv)
