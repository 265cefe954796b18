"""A plain hand-written ResNet-50 training loop: bench_gpu.py's reference for `python -m train --config resnet50`.

torchvision's resnet50 with the preset's classes, micro-batch and accumulation, autocast dtype,
torch.compile, channels_last (on CUDA), fused SGD with momentum, TF32 and gradient clipping, as the
program with that preset and the same overrides; one batch of random images, pinned, copied to the GPU
every micro-step. None of the program's bookkeeping. Prints `plain images/s N` over the steps after
the warm-up. Runs on the CPU too (NCHW, no pinning), to check the script itself.

usage: python bench/plain_resnet.py STEPS WARMUP [section.key=value ...]
"""

import sys
import time

import torch
import torch.nn.functional as F
from torchvision.models import resnet50

from train.config import load_config

steps, warmup, overrides = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
cfg = load_config("resnet50", overrides)
t, size = cfg.train, cfg.data.image_size
cuda = torch.cuda.is_available()
# The program's auto settings, by hand: the fused optimizer, and channels_last on CUDA.
fused = cfg.optim.fused != "false"
device = torch.device("cuda" if cuda else "cpu")
channels_last = t.channels_last == "true" or (t.channels_last == "auto" and cuda)
layout = torch.channels_last if channels_last else torch.contiguous_format
dtype = {"fp32": None, "bf16": torch.bfloat16}[t.precision]
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = t.tf32
torch.manual_seed(cfg.seed)
model = resnet50(num_classes=cfg.model.num_classes).to(device, memory_format=layout)
if t.compile:
    model = torch.compile(model)
optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                            weight_decay=cfg.optim.weight_decay, fused=fused or None)
accum = t.global_batch_size // t.micro_batch_size
images = torch.rand(t.micro_batch_size, 3, size, size)
labels = torch.randint(0, cfg.model.num_classes, (t.micro_batch_size,))
if cuda:
    images, labels = images.pin_memory(), labels.pin_memory()
start = time.perf_counter()
for step in range(steps):
    if step == warmup:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
    for _ in range(accum):
        x = images.to(device, non_blocking=True, memory_format=layout)
        y = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y) / accum
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
if cuda:
    torch.cuda.synchronize()
elapsed = time.perf_counter() - start
print(f"plain images/s {(steps - warmup) * t.global_batch_size / elapsed:.1f}", flush=True)
