"""The training data stream: micro-batches on this rank, and the one owner of the data position.

The position (epoch, global samples consumed in it) is what a checkpoint saves and a resume, on any
world size, continues from; nothing else writes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.data import DataPosition, GlobalBatchSampler

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DataStream:
    """Micro-batches (inputs, targets, sample indices) forever, epoch after epoch, from the position.

    Inputs arrive on ``device`` in ``memory_format`` (channels_last for a convnet that uses it).
    """

    def __init__(self, loader: DataLoader, device: torch.device, global_batch: int,
                 memory_format: torch.memory_format = torch.preserve_format) -> None:
        self.loader, self.device, self.global_batch = loader, device, global_batch
        self.memory_format = memory_format
        sampler = loader.sampler
        assert isinstance(sampler, GlobalBatchSampler)
        self.sampler = sampler
        self.epoch = 0
        # Global samples consumed from this epoch's order, counted in whole optimizer steps.
        self.consumed = 0
        self._batches: Iterator[Batch] | None = None

    def position(self) -> DataPosition:
        return self.sampler.position(self.epoch, self.consumed)

    def state_dict(self) -> dict[str, int]:
        return asdict(self.position())

    def load_state_dict(self, saved: dict[str, int]) -> None:
        """Continue from a saved position; ConfigError when it belongs to other data, seed or batch."""
        position = DataPosition(**{k: int(v) for k, v in saved.items()})
        self.sampler.check_resumable(position)
        self.epoch, self.consumed = position.epoch, position.consumed
        self._batches = None

    def next(self) -> Batch:
        if self._batches is None:
            self._batches = self._from_position()
        return next(self._batches)

    def step_done(self) -> None:
        """One optimizer step took a whole global batch."""
        self.consumed += self.global_batch

    def _from_position(self) -> Iterator[Batch]:
        # On the CPU in the loader's own layout a batch stays where it is: no call per tensor per micro-step.
        moves = self.device.type != "cpu" or self.memory_format != torch.preserve_format
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.start = self.consumed
            # A DataLoader iterator draws its workers' base seed from the global torch RNG unless its
            # loader has a generator: a resumed run's dropout would then be one draw off the
            # uninterrupted run's. Seeded from the position, every attempt draws the same.
            seed = np.random.SeedSequence([self.sampler.seed, self.epoch, self.consumed, self.sampler.rank])
            self.loader.generator = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
            for x, y, index in self.loader:
                if moves:
                    x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
                    y = y.to(self.device, non_blocking=True)
                yield x, y, index
            self.epoch += 1
            self.consumed = 0
