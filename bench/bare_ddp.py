"""A bare hand-written DDP loop: the baseline the training program is measured against in bench_loop.py.

Same model (train.models.SmallCNN), same digits data, same global batch and optimizer, none of
the training program's bookkeeping. Prints steady-state steps/s (after warm-up) on rank 0.
"""

import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from train.config import load_config
from train.data import build_data
from train.distributed import close_world
from train.models import SmallCNN

steps, warmup = int(sys.argv[1]), int(sys.argv[2])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
cfg = load_config("digits", [])
data = build_data(cfg)
torch.manual_seed(0)
model = DistributedDataParallel(SmallCNN(data.in_channels, data.num_classes))
optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
sampler: DistributedSampler[int] = DistributedSampler(data.train, num_replicas=world, rank=rank, seed=0, drop_last=True)
loader = DataLoader(data.train, batch_size=cfg.train.global_batch_size // world, sampler=sampler, drop_last=True)
step, epoch, start = 0, 0, 0.0
while step < steps:
    sampler.set_epoch(epoch)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == warmup:
            start = time.perf_counter()
        if step == steps:
            break
    epoch += 1
if rank == 0:
    print(f"bare steps/s {(steps - warmup) / (time.perf_counter() - start):.2f}", flush=True)
# Outside the timing: leave in the order that cannot hang or abort at exit (train.distributed.close_world).
del model, optimizer
close_world()
