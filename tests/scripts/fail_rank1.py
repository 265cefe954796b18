"""A user DDP script whose rank 1 fails after the process group is up, while rank 0 waits.

Rank 1 raises ValueError, or exits with $FAIL_CODE when that is set.
"""

import os
import sys

import torch.distributed as dist

dist.init_process_group("gloo")
rank = dist.get_rank()
print(f"hello from rank {rank} of {dist.get_world_size()}", flush=True)
if rank == 1:
    if "FAIL_CODE" in os.environ:
        sys.exit(int(os.environ["FAIL_CODE"]))
    raise ValueError("rank 1 is broken")
dist.barrier()
