"""Datasets we train on, and the samplers that split whole global batches across ranks."""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset

from train.config import Config, ConfigError


def size(dataset: Dataset) -> int:
    """len() of a map-style dataset: torch's Dataset type declares no __len__, every one we use has it."""
    return len(dataset)  # type: ignore[arg-type]


@dataclass
class DataBundle:
    """Train and eval sets plus what a model needs to know about their inputs and labels."""

    train: Dataset
    eval: Dataset
    in_channels: int
    num_classes: int


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands, independent of the world size: what a checkpoint stores.

    ``consumed`` counts the global samples taken from epoch ``epoch``'s order; any world size that
    divides the global batch can continue from it by re-striping the rest of that order.
    """

    epoch: int
    consumed: int
    seed: int
    dataset_len: int
    global_batch: int


class IndexedDataset(Dataset):
    """Yields ``(*sample, index)`` so the loop can record which samples it trained on."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return size(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)


class IndexedTensors(IndexedDataset):
    """IndexedDataset over in-memory tensors, fetched a whole micro-batch at a time.

    The DataLoader hands ``__getitems__`` the batch's indices: one indexing op per tensor gives the
    same batch as fetching each sample and stacking them, without a Python call per sample (on the
    digits CNN, a per-sample fetch and collate was 2 % of a training step). Paired with
    ``already_batched`` as the loader's collate_fn.
    """

    def __init__(self, dataset: TensorDataset) -> None:
        super().__init__(dataset)
        self.tensors = dataset.tensors

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        picked = torch.tensor(indices)
        return (*(tensor[picked] for tensor in self.tensors), picked)


def already_batched(batch: Any) -> Any:
    """The collate_fn of a dataset whose ``__getitems__`` returns the batch whole (a tuple of tensors)."""
    return batch


class GlobalBatchSampler(DistributedSampler):
    """A DistributedSampler that deals out whole global batches and can start mid-epoch.

    Each epoch is the same permutation DistributedSampler draws (seed + epoch), cut to a whole
    number of global batches so every optimizer step sees exactly ``global_batch`` samples.
    Rank r takes every W-th index, so the union over ranks of a step's samples — and hence the
    averaged gradient — is the same at any world size. ``start`` is the global position in the
    epoch (a multiple of the global batch), which is what a resume restores.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, global_batch: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.global_batch = global_batch
        self.start = 0

    @property
    def steps_per_epoch(self) -> int:
        return size(self.dataset) // self.global_batch

    def epoch_order(self) -> list[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(size(self.dataset), generator=generator).tolist()
        return order[: self.steps_per_epoch * self.global_batch]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order()[self.start + self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return (self.steps_per_epoch * self.global_batch - self.start) // self.num_replicas

    def position(self, epoch: int, consumed: int) -> DataPosition:
        return DataPosition(epoch, consumed, self.seed, size(self.dataset), self.global_batch)

    def check_resumable(self, saved: DataPosition) -> None:
        """A saved position only means the same samples with the same data, seed and global batch."""
        for key, name, now, then in (("data", "dataset length", size(self.dataset), saved.dataset_len),
                                     ("seed", "seed", self.seed, saved.seed),
                                     ("train.global_batch_size", "global batch", self.global_batch,
                                      saved.global_batch)):
            if now != then:
                raise ConfigError(key, f"{name} is {now} but the checkpoint was saved with {then}",
                                  "resume with the checkpoint's settings, or start over in a new output_dir")


class EvalShardSampler(Sampler[int]):
    """Rank r evaluates samples r, r+W, …, padded to ceil(N/W) so every rank runs the same batches.

    A rank with fewer batches than its peers would leave them waiting in FSDP's all-gather (or DDP's
    buffer broadcast) forever. Padding indices point past the data (``index >= length``) and
    PaddedEval marks them, so each real sample is still counted exactly once.
    """

    def __init__(self, length: int, num_replicas: int, rank: int) -> None:
        per_rank = -(-length // num_replicas)
        self.indices = range(rank, per_rank * num_replicas, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class PaddedEval(Dataset):
    """Yields ``(*sample, real)``: indices past the end repeat the first sample with ``real = 0``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return size(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        real = index < len(self)
        return (*self.dataset[index if real else 0], torch.tensor(float(real)))


def digits_file() -> Path | None:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn; None if it moved."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (images N x 8 x 8, labels), read as scikit-learn's load_digits reads them.

    Importing scikit-learn takes 0.6 s of every rank's start and restart, for a file numpy reads in
    5 ms; tests/test_train_digits.py checks both give the same arrays. Where the file is not found,
    scikit-learn loads it.
    """
    path = digits_file()
    if path is None:
        from sklearn.datasets import load_digits as sklearn_load_digits

        digits = sklearn_load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _digits() -> DataBundle:
    # scikit-learn ships the 1,797 8x8 handwritten digits: real data with no download.
    digit_images, digit_labels = load_digits()
    images = torch.tensor(digit_images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - 0.3) / 0.4
    labels = torch.tensor(digit_labels, dtype=torch.long)
    order = torch.tensor(np.random.RandomState(0).permutation(len(labels)))
    cut = int(0.8 * len(labels))
    train, held_out = order[:cut], order[cut:]
    return DataBundle(TensorDataset(images[train], labels[train]), TensorDataset(images[held_out], labels[held_out]),
                      in_channels=1, num_classes=10)


def _image_transform(pixels: int, channels: int) -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    mean, std = [0.5] * channels, [0.25] * channels
    return transforms.Compose([transforms.Resize(pixels), transforms.CenterCrop(pixels), transforms.ToTensor(),
                               transforms.Normalize(mean, std)])


class CachedFakeImages(Dataset):
    """FakeData-shaped images at no cost per sample: ``bank`` random images and labels drawn once;
    sample i is bank entry i mod ``bank``.

    FakeData draws each image and round-trips it through PIL (milliseconds for one 224x224 image),
    which at a few thousand images/s per GPU would starve the GPU; indexing a bank costs nothing.
    """

    def __init__(self, length: int, channels: int, pixels: int, classes: int, seed: int, bank: int = 64) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.length = length
        self.images = torch.rand(bank, channels, pixels, pixels, generator=generator)
        self.labels = torch.randint(0, classes, (bank,), generator=generator)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        entry = index % len(self.images)
        return self.images[entry], self.labels[entry]


def _torchvision(cfg: Config) -> DataBundle:
    from torchvision import datasets, transforms

    d = cfg.data
    if d.dataset == "fake_cached":
        classes = cfg.model.num_classes
        return DataBundle(CachedFakeImages(d.fake_train_size, 3, d.image_size, classes, seed=0),
                          CachedFakeImages(d.fake_eval_size, 3, d.image_size, classes, seed=1),
                          in_channels=3, num_classes=classes)
    if d.dataset == "fake":
        tf = transforms.Compose([transforms.ToTensor()])
        size = (3, d.image_size, d.image_size)
        classes = cfg.model.num_classes
        return DataBundle(
            datasets.FakeData(d.fake_train_size, size, classes, transform=tf, random_offset=0),
            datasets.FakeData(d.fake_eval_size, size, classes, transform=tf, random_offset=d.fake_train_size),
            in_channels=3, num_classes=classes)
    root = Path(d.root)
    if not root.exists():
        raise ConfigError("data.root", f"'{d.root}' does not exist", f"point it at your {d.dataset} files")
    try:
        if d.dataset == "mnist":
            tf = _image_transform(28, 1)
            return DataBundle(datasets.MNIST(str(root), train=True, download=False, transform=tf),
                              datasets.MNIST(str(root), train=False, download=False, transform=tf), 1, 10)
        if d.dataset == "cifar10":
            tf = _image_transform(32, 3)
            return DataBundle(datasets.CIFAR10(str(root), train=True, download=False, transform=tf),
                              datasets.CIFAR10(str(root), train=False, download=False, transform=tf), 3, 10)
        tf = _image_transform(d.image_size, 3)
        train = datasets.ImageFolder(str(root / "train"), transform=tf)
        return DataBundle(train, datasets.ImageFolder(str(root / "val"), transform=tf), 3, len(train.classes))
    except (RuntimeError, FileNotFoundError) as err:
        raise ConfigError("data.root", f"{d.dataset} files not found under '{d.root}' ({err})",
                          "point it at the dataset's folder") from None


class ArithmeticTokens(Dataset):
    """Synthetic sequences ``start + i*step (mod vocab)``: learnable, deterministic, no files."""

    def __init__(self, length: int, seq_len: int, vocab: int, offset: int = 0) -> None:
        self.length, self.seq_len, self.vocab, self.offset = length, seq_len, vocab, offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.offset + index)
        start, step = torch.randint(0, self.vocab, (2,), generator=gen).tolist()
        seq = (start + torch.arange(self.seq_len + 1) * (step % 7 + 1)) % self.vocab
        return seq[:-1], seq[1:]


class ByteChunks(Dataset):
    """Byte-level tokens of a text file in non-overlapping windows of ``seq_len + 1``."""

    def __init__(self, data: torch.Tensor, seq_len: int) -> None:
        self.data, self.seq_len = data, seq_len

    def __len__(self) -> int:
        return max(0, (len(self.data) - 1) // self.seq_len)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.data[index * self.seq_len : (index + 1) * self.seq_len + 1].long()
        return chunk[:-1], chunk[1:]


def _tokens(cfg: Config) -> DataBundle:
    m, d = cfg.model, cfg.data
    if d.dataset == "tokens":
        return DataBundle(ArithmeticTokens(d.fake_train_size, m.seq_len, m.vocab_size),
                          ArithmeticTokens(d.fake_eval_size, m.seq_len, m.vocab_size, offset=d.fake_train_size),
                          in_channels=0, num_classes=m.vocab_size)
    path = Path(d.root)
    if not path.is_file():
        raise ConfigError("data.root", f"'{d.root}' is not a text file", "point it at a UTF-8 or byte file")
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    cut = int(0.9 * len(data))
    return DataBundle(ByteChunks(data[:cut], m.seq_len), ByteChunks(data[cut:], m.seq_len), 0, 256)


def build_data(cfg: Config) -> DataBundle:
    """The train and eval sets ``cfg.data`` names; ConfigError when the eval set is empty, since
    every run evaluates at its end."""
    if cfg.data.dataset == "digits":
        bundle = _digits()
    elif cfg.data.dataset in ("tokens", "bytes"):
        bundle = _tokens(cfg)
    else:
        bundle = _torchvision(cfg)
    if size(bundle.eval) == 0:
        raise ConfigError("data", f"the {cfg.data.dataset} eval set is empty",
                          "give it samples (data.fake_eval_size, or more data under data.root)")
    return bundle


def use_pinned_memory(choice: str, device: torch.device) -> bool:
    """``auto``: pin on CUDA, where a copy from pageable memory waits for the GPU to catch up first;
    ConfigError for ``true`` on the CPU, where there is nothing to pin for."""
    if choice == "true" and device.type != "cuda":
        raise ConfigError("data.pin_memory", f"true needs a CUDA device and this run trains on {device.type}",
                          "use data.pin_memory=auto or false")
    return choice == "true" or (choice == "auto" and device.type == "cuda")


def train_loader(bundle: DataBundle, cfg: Config, rank: int, world_size: int, pin_memory: bool = False) -> DataLoader:
    """``pin_memory``: batches arrive page-locked, so train.stream's non-blocking copies overlap compute."""
    sampler = GlobalBatchSampler(bundle.train, world_size, rank, cfg.train.global_batch_size, cfg.seed)
    if sampler.steps_per_epoch == 0:
        raise ConfigError("train.global_batch_size", f"{cfg.train.global_batch_size} exceeds the "
                          f"{size(bundle.train)} training samples", "use a smaller global batch")
    if isinstance(bundle.train, TensorDataset):
        return DataLoader(IndexedTensors(bundle.train), batch_size=cfg.train.micro_batch_size, sampler=sampler,
                          num_workers=cfg.data.num_workers, pin_memory=pin_memory, collate_fn=already_batched)
    return DataLoader(IndexedDataset(bundle.train), batch_size=cfg.train.micro_batch_size, sampler=sampler,
                      num_workers=cfg.data.num_workers, pin_memory=pin_memory)


def eval_loader(bundle: DataBundle, cfg: Config, rank: int, world_size: int) -> DataLoader:
    """Batches of (inputs, targets, real): the same number and sizes on every rank (see EvalShardSampler).

    Its own generator, so evaluating never draws from the training RNG (dropout) a checkpoint saves.
    """
    return DataLoader(PaddedEval(bundle.eval), batch_size=cfg.train.micro_batch_size,
                      sampler=EvalShardSampler(size(bundle.eval), world_size, rank),
                      num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(cfg.seed))
