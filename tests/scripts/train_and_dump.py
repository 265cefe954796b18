"""Run the real training loop (as `python -m train` does), then save this rank's final parameters.

usage: train_and_dump.py DUMP_DIR --config NAME [section.key=value ...]
Tests compare the dumped parameters across ranks and against a single-process run.
"""

import os
import sys
from pathlib import Path

import torch

from train.checkpoint import TrainingParts
from train.config import load_config
from train.distributed import close_world, init_world
from train.loop import fit
from train.metrics import setup_logging
from train.parallel import unwrap

setup_logging(int(os.environ.get("RANK", "0")))
dump_dir = Path(sys.argv[1])
config_name = sys.argv[sys.argv.index("--config") + 1]
overrides = [a for a in sys.argv[2:] if "=" in a and not a.startswith("--")]
cfg = load_config(config_name, overrides)
world = init_world(cfg.train.device)


def dump(parts: TrainingParts) -> None:
    dump_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(parts.model).state_dict().items()}
    torch.save(state, dump_dir / f"rank{world.rank}.pt")


fit(cfg, world, on_finish=dump)
# fit() has freed DDP, which must not outlive the process group it uses (see close_world).
close_world()
