"""A user DDP script whose rank 1 fails as $FAIL_AS says: "raise" (an exception), "input" (a bad input, exit 2).

Rank 0 waits in a barrier meanwhile, as a peer would in a collective.
"""

import os
import sys

import torch.distributed as dist

dist.init_process_group("gloo")
if dist.get_rank() == 1:
    if os.environ.get("FAIL_AS") == "input":
        print("error: config: train.lr 'fast' is not a number; use e.g. train.lr=3e-4", file=sys.stderr)
        sys.exit(2)
    raise KeyError("no such column: 'label'")
dist.barrier()
