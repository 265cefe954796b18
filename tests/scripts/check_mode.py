"""A user's program that opts in to the check-mode contract: `--steps N` must be positive."""

import json
import os
import sys

steps = int(sys.argv[sys.argv.index("--steps") + 1])
if os.environ.get("GANGRUN_CHECK") == "1":
    if steps < 1:
        print(f"check_mode.py: error: --steps: {steps} is not positive; use 1 or more", file=sys.stderr)
        sys.exit(2)
    print(json.dumps({"gangrun_check": 1, "writes": ["out"], "dataloader_workers": 0}))
    sys.exit(0)
print(f"trained {steps} steps on rank {os.environ.get('RANK')}", flush=True)
