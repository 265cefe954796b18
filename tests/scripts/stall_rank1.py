"""A user DDP script that reports no progress: rank 1 stalls outside any collective while rank 0 waits
in all_reduce (the hang the watchdog must catch for a program that says nothing)."""

import time

import torch
import torch.distributed as dist


def stall_here() -> None:
    while True:
        time.sleep(1)


dist.init_process_group("gloo")
print(f"rank {dist.get_rank()} up", flush=True)
if dist.get_rank() == 1:
    stall_here()
dist.all_reduce(torch.ones(1))
