"""The agent's run: torchrun's own ``run`` in-process, with gangrun's hooks, exit codes and verdict."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import MutableMapping

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import run as torchrun_run

from launcher.agent.requeue import RequeuePolicy, outlive_notice
from launcher.agent.verdict import failure_summary
from launcher.compat import agent_class, hooked_agent_class, parse_torchrun_args
from launcher.contract import EXIT_OK, EXIT_REQUEUE, SHIPPED_PROGRAM, SIGNAL_EXIT_BASE


def protect_shipped_program(args: argparse.Namespace, environ: MutableMapping[str, str] = os.environ) -> None:
    """Run ``-m train`` with Python's safe path, so a train.py in the working directory cannot shadow it.

    torchrun starts workers as ``python -u -m train``, which puts the working directory first on
    sys.path; PYTHONSAFEPATH=1 (Python 3.11+, read by the workers it starts) leaves it off. Only
    for the shipped program: a user's own ``-m pkg`` keeps torchrun's meaning, found from the
    working directory.
    """
    if args.module and args.training_script == SHIPPED_PROGRAM:
        environ["PYTHONSAFEPATH"] = "1"


def main(argv: list[str] | None = None) -> int:
    """Run one node's agent; returns the first failed worker's code, 75 for "requeue me", or 0."""
    args = parse_torchrun_args(sys.argv[1:] if argv is None else argv)
    protect_shipped_program(args)
    outlive_notice()
    policy = RequeuePolicy()
    try:
        with agent_class(hooked_agent_class(policy)):
            torchrun_run(args)
    except ChildFailedError as err:
        status, summary = failure_summary(err)
        print(summary, file=sys.stderr, flush=True)
        return status
    except SignalException as err:
        # torchrun stopped its workers because it was signalled. If they saved and asked to be
        # requeued, say so to the engine; otherwise report the signal as a shell would.
        if policy.workers_saved:
            print(f"gangrun: agent stopped by {err.sigval.name}; workers saved, exiting {EXIT_REQUEUE}",
                  file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        print(f"gangrun: agent stopped by {err.sigval.name}", file=sys.stderr, flush=True)
        return SIGNAL_EXIT_BASE + int(err.sigval)
    return EXIT_OK
