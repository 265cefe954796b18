"""Mixed precision: autocast on the model's device type, GradScaler only for fp16."""

from __future__ import annotations

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
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)


def build_precision(name: str, device: torch.device, autocast: bool = True) -> Precision:
    """``autocast=False`` where the wrapper casts instead (FSDP's MixedPrecisionPolicy)."""
    dtype = _DTYPES[name] if autocast else None
    # GradScaler() without a device means CUDA; on CPU it then silently disables itself, so fp16
    # would train unscaled. Always name the device.
    scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
    return Precision(device.type, dtype, scaler)
