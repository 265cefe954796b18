"""Mixed precision: autocast on the model's device type, GradScaler only for fp16, TF32 for fp32 on CUDA."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    device_type: str
    dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None

    def autocast(self) -> AbstractContextManager[None]:
        # fp32 enters nothing: a disabled torch.autocast still costs its setup on every micro-step.
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def build_precision(name: str, device: torch.device, autocast: bool = True) -> Precision:
    """``autocast=False`` where the wrapper casts instead (FSDP's MixedPrecisionPolicy)."""
    dtype = _DTYPES[name] if autocast else None
    # GradScaler() without a device means CUDA; on CPU it then silently disables itself, so fp16
    # would train unscaled. Always name the device.
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(device.type, dtype, scaler)


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TF32 tensor cores (Ampere and later) for fp32 matmuls and cuDNN convolutions, on CUDA only.

    torch's defaults differ (matmuls off, convolutions on); ``train.tf32`` sets both one way. These
    flags also set the ``fp32_precision`` ones that torch.compile reads; setting those instead would
    make any later read of these flags raise (torch refuses a mix of the two APIs).
    """
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
