"""A worker that keeps the notice contract: SIGUSR2/SIGTERM set a flag; it then exits 75 ("requeue me")."""

import os
import signal
import sys
import time

flag: list[int] = []
for sig in (signal.SIGUSR2, signal.SIGTERM):
    signal.signal(sig, lambda signum, _f: flag.append(signum))
rank = os.environ.get("RANK", "0")
print(f"worker pid={os.getpid()} restart={os.environ.get('TORCHELASTIC_RESTART_COUNT')} ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
while not flag and time.monotonic() < deadline:
    time.sleep(0.05)
if flag:
    line = f"worker got {signal.Signals(flag[0]).name}; saved; exiting 75"
    print(line, flush=True)
    if "NOTICE_LOG" in os.environ:
        # The agent may be gone and no longer relaying this worker's output.
        with open(os.environ["NOTICE_LOG"], "a") as f:
            f.write(line + "\n")
    sys.exit(75)
print("worker finished without a notice", flush=True)
