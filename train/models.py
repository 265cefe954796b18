"""The models we ship: a small CNN, torchvision's ResNet-18 and ResNet-50, and a decoder-only transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.config import CONVNETS, ModelConfig
from train.data import DataBundle


class SmallCNN(nn.Module):
    """Two convolutions and a small head; adaptive pooling lets it take 8x8 digits or 32x32 images."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP. FSDP shards per block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
                                 nn.Linear(4 * cfg.d_model, cfg.d_model))
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    """A decoder-only language model, nanoGPT-shaped: small for CPU tests, GPT-2 small (124M) in gpt2-small."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # The shared matrix is also the output head: GPT-2's N(0, 0.02), since an embedding's default
            # N(0, 1) would start the logits at a standard deviation of about sqrt(d_model).
            nn.init.normal_(self.tok.weight, std=0.02)
            self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def build_model(cfg: ModelConfig, data: DataBundle) -> nn.Module:
    if cfg.name == "cnn":
        return SmallCNN(data.in_channels, data.num_classes)
    if cfg.name == "gpt":
        return TinyGPT(cfg)
    from torchvision.models import resnet18, resnet50

    model = (resnet50 if cfg.name == "resnet50" else resnet18)(num_classes=data.num_classes)
    if data.in_channels != 3:
        model.conv1 = nn.Conv2d(data.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def use_channels_last(choice: str, model_name: str, device: torch.device) -> bool:
    """``auto``: convnets on CUDA, where cuDNN's NHWC kernels use the tensor cores without transposes;
    on the CPU the NCHW layout stays, so CPU runs are unchanged."""
    if choice == "auto":
        return model_name in CONVNETS and device.type == "cuda"
    return choice == "true"
