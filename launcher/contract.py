"""The launcher's side of the contract with the training program and the engines, defined once.

What passes between launcher and train is argv, environment, exit codes, signals and log lines;
train/contract.py holds the program's side with the same values (the two never import each other),
and tests/test_contract.py checks both sides and the shipped files in slurm/ and k8s/ agree.
"""

from __future__ import annotations

import re
import signal

EXIT_OK = 0
# Bad input (a spec, profile or config error): nothing was started, and retrying will not help.
EXIT_BAD_INPUT = 2
# EX_TEMPFAIL (sysexits.h): the ranks were told to stop, saved a checkpoint, and ask to be started
# again with the same command. Engines requeue on it; it is never a crash to restart in place.
EXIT_REQUEUE = 75
# The hang watchdog stopped the job: a rank made no progress for the hang timeout (as timeout(1) exits).
EXIT_HANG = 124
# A process killed by signal N exits 128 + N in shells, Slurm and Kubernetes alike.
SIGNAL_EXIT_BASE = 128

# Slurm's preemption and time-limit notice (`--signal=USR2@grace`). Not USR1: NCCL takes it.
NOTICE_SIGNAL = signal.SIGUSR2
# Each asks the ranks to save and exit EXIT_REQUEUE; a worker dead of one after a stop died of the stop.
STOP_SIGNALS = (signal.SIGTERM, NOTICE_SIGNAL, signal.SIGINT)

# The agent names a folder here for every rank's progress file (see train/progress.py and the README's
# "progress protocol"): ``$GANGRUN_PROGRESS_DIR/rank$RANK`` holds one JSON line, ``{"step": N, "phase": "train"}``.
PROGRESS_DIR_ENV = "GANGRUN_PROGRESS_DIR"
# Where py-spy cannot attach (no ptrace), the agent asks the training program for its stacks with this
# signal (faulthandler); ignored by default, so it does no harm to a program that registered nothing.
STACK_SIGNAL = signal.SIGURG

# Every worker line carries its *global* rank; torchrun expands ${rank} itself. Its default
# `[default0]:` names only the local rank, which repeats on every node.
LOG_PREFIX_TEMPLATE = "[rank${rank}]: "
_RANK_PREFIX = re.compile(r"^" + re.escape(LOG_PREFIX_TEMPLATE).replace(re.escape("${rank}"), r"(\d+)"))

# The program gangrun ships (`-m train`). It runs with Python's safe path (-P), so a train.py in the
# working directory, the most common file name in ML repositories, can never run in its place.
SHIPPED_PROGRAM = "train"
# The node agent every engine starts, with -P for the same reason (a user's own launcher/ package).
AGENT_MODULE = "launcher.agent"
SAFE_PATH_FLAG = "-P"


# Check mode (the README's "check-mode contract"): before a run starts or a job is submitted, a program
# that opts in is run once with GANGRUN_CHECK=1 and the world sizes the job may run at in
# GANGRUN_CHECK_WORLD_SIZES (comma-separated). It validates its input and starts nothing: exit 0 with
# one JSON line ``{"gangrun_check": 1, "writes": {KEY: FOLDER_OR_URL}, "dataloader_workers": N}`` on
# stdout (what it will write, so the launcher and `gangrun doctor` can look there), or EXIT_BAD_INPUT
# with its one-line error on stderr.
CHECK_ENV = "GANGRUN_CHECK"
CHECK_WORLD_SIZES_ENV = "GANGRUN_CHECK_WORLD_SIZES"
CHECK_REPORT_KEY = "gangrun_check"
# The agent tells its workers the world the job asked for, ``NODES_MIN:NODES_MAX/NPROC`` (NPROC may be
# auto); after the rendezvous the program checks the world it joined against it (train/world.py).
EXPECTED_WORLD_ENV = "GANGRUN_EXPECTED_WORLD"
# Seconds a collective waits before the process group fails (`--pg-timeout`); unset: torch's default.
PG_TIMEOUT_ENV = "GANGRUN_PG_TIMEOUT_S"
# bench/bench_recovery.py names a file here; the agent and its ranks append one JSON line per moment
# of a start or a restart (launcher/agent/timeline.py, train/timeline.py). Unset, nothing is written.
TIMELINE_ENV = "GANGRUN_TIMELINE"


def rank_of(line: str) -> int | None:
    """The global rank a worker line was printed by, or None for the agent's and engines' own lines."""
    match = _RANK_PREFIX.match(line)
    return int(match.group(1)) if match else None


def exit_status(code: int) -> int:
    """A process's return code as an exit status: -N (killed by signal N) becomes 128 + N."""
    return SIGNAL_EXIT_BASE - code if code < 0 else code


def ignore_stop_signals() -> None:
    """The exit code is decided: a stop signal from here to the process's end is ignored.

    CPython resets every Python signal handler to SIG_DFL while the interpreter finalizes, so a stop
    signal during those last milliseconds (Slurm and Kubernetes signal every process of a job) killed
    a finished process with 128 + N; an ignored signal stays ignored through finalization.
    """
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
