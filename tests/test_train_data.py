"""Real datasets from local files in their published formats (tiny ones we write), and synthetic ones."""

from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from train.config import ConfigError, load_config
from train.data import build_data, size


def write_mnist(raw, prefix: str, count: int) -> None:
    """idx3/idx1 files exactly as the MNIST distribution ships them (uncompressed)."""
    images = np.random.RandomState(0).randint(0, 256, (count, 28, 28), dtype=np.uint8)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, count, 28, 28) + images.tobytes())
    labels = (np.arange(count) % 10).astype(np.uint8)
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, count) + labels.tobytes())


def test_mnist_from_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_mnist(raw, "train", 20)
    write_mnist(raw, "t10k", 10)
    bundle = build_data(load_config("digits", ["data.dataset=mnist", f"data.root={tmp_path}"]))
    assert (size(bundle.train), size(bundle.eval), bundle.in_channels) == (20, 10, 1)
    image, label = bundle.train[3]
    assert image.shape == (1, 28, 28) and label == 3


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks the published files' MD5 sums, which no tiny file can match: only the sum is
    # skipped (the files must still exist); the pickled batch format is read for real.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    bundle = build_data(load_config("digits", ["data.dataset=cifar10", f"data.root={tmp_path}"]))
    assert (size(bundle.train), size(bundle.eval), bundle.in_channels) == (20, 4, 3)
    assert bundle.train[0][0].shape == (3, 32, 32)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(tmp_path / split / cls / f"{i}.png")
    bundle = build_data(load_config("resnet-fake", ["data.dataset=imagefolder", f"data.root={tmp_path}",
                                                    "data.image_size=16"]))
    assert (size(bundle.train), bundle.num_classes) == (6, 2)
    assert bundle.train[0][0].shape == (3, 16, 16)


def test_missing_files_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_data(load_config("digits", ["data.dataset=mnist", f"data.root={tmp_path}/none"]))
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_data(load_config("digits", ["data.dataset=mnist", f"data.root={tmp_path}"]))


def test_byte_level_text(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(bytes(range(256)) * 8)
    bundle = build_data(load_config("gpt-tiny", ["data.dataset=bytes", f"data.root={text}", "model.seq_len=16"]))
    x, y = bundle.train[2]
    assert torch.equal(x[1:], y[:-1]) and x.dtype == torch.long and x[0].item() == 32


def test_digits_is_the_real_dataset():
    bundle = build_data(load_config("digits", []))
    assert size(bundle.train) + size(bundle.eval) == 1797


def test_an_empty_eval_set_is_a_config_error_not_a_division_by_zero():
    with pytest.raises(ConfigError, match=r"data: the tokens eval set is empty"):
        build_data(load_config("gpt-tiny", ["data.fake_eval_size=0"]))


def test_a_tensor_dataset_is_fetched_a_batch_at_a_time_with_the_very_batches_of_a_per_sample_fetch():
    from torch.utils.data import DataLoader

    from train.data import GlobalBatchSampler, IndexedDataset, IndexedTensors, train_loader

    cfg = load_config("digits", ["train.micro_batch_size=16", "train.global_batch_size=32"])
    bundle = build_data(cfg)
    batched = train_loader(bundle, cfg, rank=1, world_size=2)
    assert isinstance(batched.dataset, IndexedTensors) and isinstance(batched.sampler, GlobalBatchSampler)
    per_sample = DataLoader(IndexedDataset(bundle.train), batch_size=16, sampler=batched.sampler)
    pairs = list(zip(batched, per_sample, strict=True))
    assert len(pairs) == batched.sampler.steps_per_epoch
    for (x, y, index), (x1, y1, index1) in pairs:
        assert torch.equal(x, x1) and torch.equal(y, y1) and torch.equal(index, index1)
