"""Training FLOPs per token or image, the devices' peak FLOP/s, and a window's throughput and MFU."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from train.config import ModelConfig
from train.data import DataBundle


@dataclass(frozen=True)
class DevicePeak:
    """A GPU's dense bf16 tensor-core peak; ``name`` is matched as whole words, case-insensitively, in
    ``torch.cuda.get_device_name()`` ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")."""

    name: str
    bf16_tflops: float


# Dense (not 2:4 sparse) bf16 peaks from NVIDIA's data sheets. The first match wins, so a variant
# comes before its family ("H100 PCIe" before "H100"); whole words keep "L4" off "L40S", "A100" off
# "A1000" and "B200" off "GB200".
PEAKS = (
    DevicePeak("GB200", 2500), DevicePeak("B200", 2250),
    DevicePeak("GH200", 989), DevicePeak("H200 NVL", 835), DevicePeak("H200", 989),
    DevicePeak("H100 NVL", 835), DevicePeak("H100 PCIe", 756), DevicePeak("H100", 989),
    DevicePeak("A100", 312), DevicePeak("L40S", 362), DevicePeak("L40", 181), DevicePeak("L4", 121),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 FLOP/s of the GPU named ``device_name``; None for a GPU not in PEAKS."""
    for peak in PEAKS:
        if re.search(rf"\b{re.escape(peak.name)}\b", device_name, re.IGNORECASE):
            return peak.bf16_tflops * 1e12
    return None


def device_peak_flops(device: torch.device) -> float | None:
    """This rank's GPU's dense bf16 FLOP/s; None on the CPU or an unknown GPU (then no MFU is reported)."""
    if device.type != "cuda":
        return None
    return peak_bf16_flops(torch.cuda.get_device_name(device))


def non_embedding_params(model: nn.Module) -> int:
    """N of the 6·N term: every parameter but the embedding tables.

    A table is a lookup, no FLOPs; every other weight does one multiply-add per token forward. A
    table tied to the output head is a matmul there, so it is counted once, as the head: GPT-2
    small's N is then its 124M less the 0.8M position table, the N of nanoGPT's ``estimate_mfu``.
    Biases and LayerNorm gains are counted too (0.1 %), as nanoGPT does.
    """
    counted: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in counted:
                counted.add(id(param))
                total += param.numel()
    return total


def transformer_flops_per_token(n_params: int, n_layer: int, n_head: int, head_dim: int, seq_len: int) -> int:
    """Training FLOPs per token of a decoder-only transformer: 6·N + 12·L·H·Q·T (PaLM, appendix B).

    6·N: each of the N weights does a multiply-add (2 FLOPs) per token forward and twice that backward.
    12·L·H·Q·T: per layer, the attention scores QKᵀ and the weighted sum AV take 2·H·Q·T FLOPs each per
    token forward, three times that with backward; counted over all T keys although the causal mask
    skips half, as PaLM and nanoGPT count.
    """
    return 6 * n_params + 12 * n_layer * n_head * head_dim * seq_len


def counted_training_flops(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Training FLOPs of one sample (a convnet's image) counted by torch's FlopCounterMode: the forward's
    times 3 for forward and backward (backward does two matmuls or convolutions per forward one).

    Counted on a copy on the meta device: no compute, no memory, and the model's BatchNorm statistics
    and the RNG are untouched.
    """
    # Imported on use: it pulls in triton, 60 ms of every rank's start where no convnet is counted.
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, *sample_shape, device="meta"))
    return 3 * counter.get_total_flops()


# A metrics row's key for each unit's rate per device.
RATE_KEYS = {"tokens": "tokens_per_s_per_device", "images": "images_per_s_per_device"}


@dataclass(frozen=True)
class Throughput:
    """What a training sample is worth: ``per_sample`` tokens (a sequence) or one image, the training
    FLOPs of each, and this rank's device peak; ``flops_per_unit`` is None where no MFU is reported."""

    unit: Literal["tokens", "images"]
    per_sample: int
    flops_per_unit: float | None
    peak_flops: float | None

    def window(self, samples: int, seconds: float, devices: int) -> dict[str, float]:
        """``{unit}_per_s_per_device`` over a window of ``samples`` global samples, and its ``mfu`` when known:
        model FLOPs done per second per device over the device's peak."""
        per_device = samples * self.per_sample / seconds / devices
        row = {RATE_KEYS[self.unit]: per_device}
        if self.flops_per_unit is not None and self.peak_flops is not None:
            row["mfu"] = per_device * self.flops_per_unit / self.peak_flops
        return row


def measure_throughput(cfg: ModelConfig, model: nn.Module, data: DataBundle, device: torch.device) -> Throughput:
    """The Throughput of ``model`` (unwrapped, uncompiled) training on ``data`` on ``device``. FLOPs are
    counted only where the device's peak is known, so a CPU run does no extra work."""
    peak = device_peak_flops(device)
    if cfg.name == "gpt":
        flops = None if peak is None else transformer_flops_per_token(
            non_embedding_params(model), cfg.n_layer, cfg.n_head, cfg.d_model // cfg.n_head, cfg.seq_len)
        return Throughput("tokens", cfg.seq_len, flops, peak)
    image_flops = None if peak is None else counted_training_flops(model, tuple(data.train[0][0].shape))
    return Throughput("images", 1, image_flops, peak)
