"""`python -m launcher.agent [agent flags] TORCHRUN_ARGV`: stop signals are noted before torch is imported."""

import signal
import sys

from launcher.contract import STOP_SIGNALS, ignore_stop_signals

noted: list[int] = []
# Importing torch takes seconds; a stop signal or the notice meanwhile must not kill the agent
# (143, 140) but ask for a requeue with nothing started (see launcher.agent.main.main).
for _signum in STOP_SIGNALS:
    signal.signal(_signum, lambda signum, _frame: noted.append(signum))

from launcher.agent.main import main  # noqa: E402

code = main(noted=noted)
ignore_stop_signals()
sys.exit(code)
