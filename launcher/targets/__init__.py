"""Engines a JobSpec can run on: one module each behind one small interface.

``local`` runs in the foreground (``gangrun run``); the cluster targets submit and hand back a
JobHandle that later ``status``/``logs``/``cancel`` calls find again (see launcher.jobs).
"""

from __future__ import annotations

import importlib
from typing import Iterator, Protocol

from launcher.jobs import JobHandle
from launcher.spec import JobSpec

# Target name -> module defining ``TARGET``; imported only when used.
CLUSTER_TARGETS = {"slurm": "launcher.targets.slurm", "k8s": "launcher.targets.kubernetes"}


class Target(Protocol):
    """What every cluster engine provides. ``render`` is pure: the exact text that would be submitted."""

    name: str

    def render(self, spec: JobSpec) -> str: ...

    def submit(self, spec: JobSpec) -> JobHandle: ...

    def status(self, handle: JobHandle) -> str: ...

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]: ...

    def cancel(self, handle: JobHandle) -> None: ...


def get_target(name: str) -> Target:
    return importlib.import_module(CLUSTER_TARGETS[name]).TARGET
