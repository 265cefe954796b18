"""Every timeout a job lives by, in one table: its default, what it bounds, where it goes, and who set it.

``gangrun run`` and ``gangrun submit`` print the table's values with their source at start, so a job
never waits on a number nobody saw (torchrun's own defaults hide in flags, env and code).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from launcher.spec import JobSpec


@dataclass(frozen=True)
class TimeoutRow:
    """One timeout: the option that sets it, its default, and what it bounds."""

    path: str
    label: str
    default: str
    bounds: str


# torchrun's and torch's own defaults (torch 2.14): c10d rendezvous join 600 s, last call 30 s, store
# reads 60 s; a process group's collectives 30 min (torch.distributed.constants.default_pg_timeout).
TIMEOUTS = (
    TimeoutRow("rdzv_join_timeout", "rendezvous join", "600", "a node's agent waiting for the others to join"),
    TimeoutRow("rdzv_last_call_timeout", "rendezvous last call", "30",
               "an elastic rendezvous waiting for more nodes once its minimum joined"),
    TimeoutRow("store_timeout", "store", "60", "one read from the rendezvous store"),
    TimeoutRow("pg_timeout", "process group", "1800", "a collective that waits for a rank (gloo, nccl)"),
    TimeoutRow("hang_timeout", "hang", "auto", "a rank making no progress before the job is called hung"),
)
# Each engine's stop grace: how long ranks may save after a stop signal.
STOP_GRACE = {"local": "local.stop_grace_s", "slurm": "slurm.signal_grace_s", "k8s": "k8s.checkpoint_budget_s"}


def rdzv_conf(spec: JobSpec, backend: str) -> dict[str, str]:
    """The rendezvous timeouts the spec sets, as torchrun's ``--rdzv-conf`` keys for ``backend``."""
    if backend == "static":
        return {} if spec.rdzv_join_timeout is None else {"timeout": str(spec.rdzv_join_timeout)}
    keys = {"join_timeout": spec.rdzv_join_timeout, "last_call_timeout": spec.rdzv_last_call_timeout,
            "read_timeout": spec.store_timeout}
    return {key: str(value) for key, value in keys.items() if value is not None}


def _seconds(value: Any) -> str:
    return f"{value} s" if str(value).isdigit() else str(value)


def timeouts_line(spec: JobSpec, target: str, options: Any, sources: Mapping[str, str]) -> str:
    """``gangrun: timeouts: rendezvous join 600 s (default), ...`` for the job about to start."""
    parts = []
    for row in TIMEOUTS:
        value = getattr(spec, row.path)
        shown = row.default if value is None else value
        parts.append(f"{row.label} {_seconds(shown)} ({sources.get(row.path, 'default')})")
    grace = STOP_GRACE[target]
    parts.append(f"stop grace {_seconds(getattr(options, grace.split('.', 1)[1]))} ({sources.get(grace, 'default')})")
    return "gangrun: timeouts: " + ", ".join(parts)
