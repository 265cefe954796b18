"""The smallest DDP job: join the group, do one all-reduce (the first step), leave."""

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
dist.all_reduce(torch.ones(1))
dist.destroy_process_group()
