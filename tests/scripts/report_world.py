"""A plain user DDP script, unchanged from what a user would write: report the world, then wait."""

import os
import sys
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
total = torch.tensor([1.0])
dist.all_reduce(total)
print(f"rank {dist.get_rank()} world {dist.get_world_size()} sum {total.item():.0f}", flush=True)
if "SLEEP" in os.environ:
    print("ready", flush=True)
    time.sleep(float(os.environ["SLEEP"]))
dist.destroy_process_group()
sys.exit(0)
