"""A user DDP loop that reports no progress, whose rank 1 computes 4x as long as rank 0 per step:
rank 0 spends most of each step waiting in all_reduce for it."""

import sys
import time

import torch
import torch.distributed as dist


def compute_step(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


dist.init_process_group("gloo")
rank = dist.get_rank()
for _ in range(int(sys.argv[1])):
    compute_step(0.08 if rank == 1 else 0.02)
    dist.all_reduce(torch.ones(1))
print(f"rank {rank} done", flush=True)
dist.destroy_process_group()
