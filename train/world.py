"""After the rendezvous, the world is asserted: every rank's host and node, against what the launcher asked for.

A world that differs from the job's spec stops at once with one line: never a world of one that trains
alone because torchrun was bypassed, never two nodes' ranks doubled up on one host while another idles.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from train.contract import EXPECTED_WORLD_ENV


@dataclass(frozen=True)
class Member:
    """One rank as it reports itself: its global rank, its node (torchrun's GROUP_RANK) and its host."""

    rank: int
    node: int
    host: str


@dataclass(frozen=True)
class Expected:
    """The node range and processes per node the launcher started (``MIN:MAX/NPROC``; NPROC may be auto)."""

    nodes_min: int
    nodes_max: int
    nproc: int | None

    @classmethod
    def parse(cls, text: str) -> Expected:
        nodes, _, nproc = text.partition("/")
        low, _, high = nodes.partition(":")
        return cls(int(low), int(high or low), int(nproc) if nproc.isdigit() else None)


def me(environ: Mapping[str, str] = os.environ) -> Member:
    return Member(int(environ.get("RANK", "0")), int(environ.get("GROUP_RANK", "0")), socket.gethostname())


def expected(environ: Mapping[str, str] = os.environ) -> Expected | None:
    text = environ.get(EXPECTED_WORLD_ENV)
    return Expected.parse(text) if text else None


def lone_copy_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why this process, started without torchrun's variables, would train alone beside its copies."""
    if "RANK" in environ:
        return None
    tasks = int(environ.get("SLURM_NTASKS", "1") or "1")
    if tasks > 1:
        return (f"{tasks} Slurm tasks each started without torchrun, so each would train alone in a world of "
                "one; start them through `gangrun submit --target slurm` or torchrun")
    return None


def spans(ranks: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    parts: list[str] = []
    for rank in sorted(ranks):
        if parts and rank == int(parts[-1].rsplit("-", 1)[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{rank}"
        else:
            parts.append(str(rank))
    return ",".join(parts)


def describe(members: list[Member]) -> str:
    """``4 ranks on 2 nodes: node 0 on a (ranks 0-1), node 1 on b (ranks 2-3)``."""
    nodes = sorted({m.node for m in members})
    where = ", ".join(f"node {n} on {next(m.host for m in members if m.node == n)} "
                      f"(ranks {spans([m.rank for m in members if m.node == n])})" for n in nodes)
    return f"{len(members)} ranks on {len(nodes)} node{'s' if len(nodes) != 1 else ''}: {where}"


def world_problem(members: list[Member], want: Expected | None) -> str | None:
    """What about this world differs from the spec, or None when it is the world the job asked for."""
    nodes = {m.node for m in members}
    hosts_of = {n: {m.host for m in members if m.node == n} for n in nodes}
    split = [n for n, hosts in hosts_of.items() if len(hosts) > 1]
    if split:
        return f"node {split[0]}'s ranks are on several hosts ({', '.join(sorted(hosts_of[split[0]]))})"
    hosts = {m.host for m in members}
    # One host for every node is a run on one machine (gangrun run --nnodes N); otherwise each node has its own.
    if 1 < len(hosts) < len(nodes):
        shared = sorted(h for h in hosts if sum(h in hs for hs in hosts_of.values()) > 1)
        return f"{len(nodes)} nodes joined from {len(hosts)} hosts: {', '.join(shared)} runs more than one node"
    if want is None:
        return None
    if not want.nodes_min <= len(nodes) <= want.nodes_max:
        asked = str(want.nodes_min) if want.nodes_min == want.nodes_max else f"{want.nodes_min}-{want.nodes_max}"
        return f"{len(nodes)} node(s) joined, the job asks for {asked}"
    if want.nproc is not None and len(members) != len(nodes) * want.nproc:
        return f"{len(members)} ranks joined, the job asks for {len(nodes) * want.nproc} ({want.nproc} per node)"
    return None
