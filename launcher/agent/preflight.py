"""The agent's cheap checks before its rendezvous: a node that cannot take part says why and exits 2 at once."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from launcher.contract import EXIT_BAD_INPUT
from launcher.doctor.cheap import NodeLayout, cheap_checks
from launcher.doctor.result import Check, first_failure
from launcher.spec import parse_nnodes

# torchrun's own defaults when --rdzv-endpoint or --master-port names no port.
DEFAULT_C10D_PORT = 29400
DEFAULT_MASTER_PORT = 29500


def torchrun_layout(args: argparse.Namespace) -> NodeLayout:
    """Where and at what scale torchrun's parsed arguments say this node meets the others."""
    if args.rdzv_backend == "static":
        host, port = str(args.master_addr), int(args.master_port or DEFAULT_MASTER_PORT)
    else:
        endpoint = str(args.rdzv_endpoint or "")
        head, sep, tail = endpoint.rpartition(":")
        host, port = (head, int(tail)) if sep and tail.isdigit() else (endpoint, DEFAULT_C10D_PORT)
    nproc = str(args.nproc_per_node)
    return NodeLayout(host.strip("[]") or None, port, parse_nnodes(args.nnodes),
                      int(nproc) if nproc.isdigit() else nproc)


def node_checks(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> list[Check]:
    return cheap_checks(torchrun_layout(args), environ)


def preflight_or_exit(args: argparse.Namespace) -> None:
    """Print what did not pass; on a failure exit EXIT_BAD_INPUT before torchrun's rendezvous waits for
    nodes that will never come (its timeout is minutes)."""
    found = node_checks(args)
    for check in found:
        if check.status != "ok":
            print(check.preflight_line(), file=sys.stderr, flush=True)
    if first_failure(found) is not None:
        raise SystemExit(EXIT_BAD_INPUT)
