"""A plain hand-written GPT training loop: bench_gpu.py's reference for `python -m train --config gpt2-small`.

The same model (train.models.TinyGPT as the preset shapes it), micro-batch and accumulation, autocast
dtype, torch.compile, fused AdamW, TF32 and gradient clipping as the program with that preset and the
same overrides; one batch of random tokens, pinned, copied to the GPU every micro-step. None of the
program's bookkeeping. Prints `plain tokens/s N` over the steps after the warm-up. Runs on the CPU
too (no pinning), to check the script itself.

usage: python bench/plain_gpt.py STEPS WARMUP [section.key=value ...]
"""

import sys
import time

import torch
import torch.nn.functional as F

from train.config import load_config
from train.models import TinyGPT

steps, warmup, overrides = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
cfg = load_config("gpt2-small", overrides)
m, t = cfg.model, cfg.train
cuda = torch.cuda.is_available()
# The program's auto setting, by hand: the fused optimizer (on CUDA and the CPU alike).
fused = cfg.optim.fused != "false"
device = torch.device("cuda" if cuda else "cpu")
dtype = {"fp32": None, "bf16": torch.bfloat16}[t.precision]
torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = t.tf32
torch.manual_seed(cfg.seed)
model = TinyGPT(m).to(device)
if t.compile:
    model = torch.compile(model)  # type: ignore[assignment]
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                              fused=fused or None)
accum = t.global_batch_size // t.micro_batch_size
tokens = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.seq_len + 1))
inputs, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
if cuda:
    inputs, targets = inputs.pin_memory(), targets.pin_memory()
start = time.perf_counter()
for step in range(steps):
    if step == warmup:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
    for _ in range(accum):
        x, y = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1)) / accum
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
if cuda:
    torch.cuda.synchronize()
elapsed = time.perf_counter() - start
print(f"plain tokens/s {(steps - warmup) * t.global_batch_size * m.seq_len / elapsed:.1f}", flush=True)
