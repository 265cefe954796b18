"""`python -m train` in check mode: validate the config for every world size the job may run at, start nothing.

The contract (train/contract.py, the README's "check-mode contract"): GANGRUN_CHECK=1, the world sizes
in GANGRUN_CHECK_WORLD_SIZES; exit 0 with one JSON report on stdout, or 2 with one line on stderr.
Nothing here imports torch, so the launcher's check costs a fraction of a second, and nothing is
written; the folders the report names are the launcher's to look at, where they are its own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from train.arguments import parse_args
from train.config import Config, ConfigError, accumulation_steps, load_config
from train.contract import CHECK_REPORT_KEY, CHECK_WORLD_SIZES_ENV, EXIT_BAD_INPUT, EXIT_OK


def world_sizes(environ: Mapping[str, str]) -> list[int]:
    """The world sizes to check: the launcher's list, else this process's own WORLD_SIZE."""
    text = environ.get(CHECK_WORLD_SIZES_ENV) or environ.get("WORLD_SIZE", "1")
    return [int(size) for size in text.split(",") if size.strip()]


def check_config(cfg: Config, sizes: list[int]) -> None:
    """ConfigError for the first world size the global batch cannot be split over."""
    for size in sizes:
        accumulation_steps(cfg.train, size)


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg, world_sizes(environ))
    except ConfigError as err:
        print(f"train: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Each folder under the config key that sets it, so the launcher's check of it names that key.
    report = {CHECK_REPORT_KEY: 1, "writes": {"output_dir": cfg.output_dir, "checkpoint.dir": cfg.checkpoint_dir},
              "dataloader_workers": cfg.data.num_workers}
    print(json.dumps(report))
    return EXIT_OK
