"""This rank's random number generators (torch CPU and CUDA, python, numpy) as tensors, and back.

Tensors only, so a checkpoint holding them loads with ``weights_only`` and DCP shards them like
any other entry. Each rank saves under its own key: DCP silently keeps one rank's value of a key
that several ranks save (pytorch#120356), which would give every rank rank 0's dropout stream.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def rng_key(rank: int) -> str:
    return f"rng_rank{rank}"


def capture_rng(device: torch.device) -> dict[str, torch.Tensor]:
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *mt_state], dtype=torch.int64),
        "python_gauss": torch.tensor([math.nan if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.tensor(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, cached], dtype=torch.float64),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, *mt_state = state["python"].tolist()
    gauss = state["python_gauss"].item()
    random.setstate((version, tuple(mt_state), None if math.isnan(gauss) else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
