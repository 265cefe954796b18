"""The training program's side of its contract with the launcher and the engines, defined once.

launcher/contract.py holds the launcher's side with the same values (the two halves never import
each other); tests/test_contract.py checks that they agree with each other and with the shipped
files in slurm/ and k8s/.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
# Training failed in a way the program explained in one line (e.g. no space left for a checkpoint).
EXIT_FAILED = 1
# Bad input (config, data location, a checkpoint that cannot resume): retrying will not help.
EXIT_BAD_INPUT = 2
# EX_TEMPFAIL (sysexits.h): stopped on purpose, state saved, start me again with the same command.
# Slurm requeues on it; the launcher never counts it as a crash to restart in place.
EXIT_REQUEUE = 75
# Slurm's preemption and time-limit notice. Not USR1: NCCL takes it.
NOTICE_SIGNAL = signal.SIGUSR2
# Each of these asks the ranks to save at the next step boundary and exit EXIT_REQUEUE.
STOP_SIGNALS = (signal.SIGTERM, NOTICE_SIGNAL, signal.SIGINT)
# The node agent names a folder here for every rank's progress file (see train/progress.py and the
# README's "progress protocol"): each rank overwrites ``$GANGRUN_PROGRESS_DIR/rank$RANK`` with one
# JSON line, ``{"step": N, "phase": "train"}``, and every write counts as progress.
PROGRESS_DIR_ENV = "GANGRUN_PROGRESS_DIR"
# The agent's fallback to py-spy for a stack of every thread: faulthandler, registered on this signal.
# SIGURG is ignored by default, so sending it to a program that registered nothing does no harm.
STACK_SIGNAL = signal.SIGURG
# Check mode (the README's "check-mode contract"): with GANGRUN_CHECK=1 the program validates its input
# for each world size listed in GANGRUN_CHECK_WORLD_SIZES and starts nothing: exit 0 with one JSON
# line ``{"gangrun_check": 1, "writes": {KEY: FOLDER_OR_URL}, "dataloader_workers": N}`` on stdout, or
# EXIT_BAD_INPUT with one line on stderr.
CHECK_ENV = "GANGRUN_CHECK"
CHECK_WORLD_SIZES_ENV = "GANGRUN_CHECK_WORLD_SIZES"
CHECK_REPORT_KEY = "gangrun_check"
# The agent tells its workers the world the job asked for, ``NODES_MIN:NODES_MAX/NPROC`` (NPROC may be
# auto); after the rendezvous the program checks the world it joined against it (train/world.py).
EXPECTED_WORLD_ENV = "GANGRUN_EXPECTED_WORLD"
# Seconds a collective waits before the process group fails (`--pg-timeout`); unset: torch's default.
PG_TIMEOUT_ENV = "GANGRUN_PG_TIMEOUT_S"
