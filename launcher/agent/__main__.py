"""`python -m launcher.agent [agent flags] TORCHRUN_ARGV`: stop signals are noted before torch is imported."""

import gc
import signal
import sys

from launcher.contract import STOP_SIGNALS, ignore_stop_signals

noted: list[int] = []
# Importing torch takes seconds; a stop signal or the notice meanwhile must not kill the agent
# (143, 140) but ask for a requeue with nothing started (see launcher.agent.main.main).
for _signum in STOP_SIGNALS:
    signal.signal(_signum, lambda signum, _frame: noted.append(signum))

# torch's ~190,000 objects make next to no garbage, yet each full pass of the collector walks them
# all: off while importing, then frozen out of its reach (0.3 s of every start; train/__main__.py too).
gc.disable()
from launcher.agent.main import main  # noqa: E402

gc.freeze()
gc.enable()
code = main(noted=noted)
ignore_stop_signals()
# The interpreter's last collection at exit would walk them all again (0.3 s): the job ends sooner.
gc.freeze()
sys.exit(code)
