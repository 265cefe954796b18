"""What the nodes' agents tell each other through the rendezvous store: a hang was called, and each
node's view of its ranks, so every node takes its stacks while all ranks are alive and prints the
same verdict over all of them.

The store is torchrun's own (the worker group's), so this works wherever the agents met: local
nodes, Slurm, Kubernetes pods. Keys carry the attempt, since a static rendezvous keeps one store
across restarts. A store that is gone (node 0's agent exited) reads as "nothing said".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from launcher.agent.hang import RankView

GATHER_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HangCall:
    """Who called a hang, when, and after how long without progress."""

    node: int
    called_at: float
    silent_s: float


class NodeExchange:
    def __init__(self, store: Any, node: int, nodes: int, attempt: int) -> None:
        self.store, self.node, self.nodes = store, node, nodes
        self._prefix = f"gangrun/attempt{attempt}"

    @property
    def alone(self) -> bool:
        return self.store is None or self.nodes <= 1

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def _get(self, name: str) -> Any:
        try:
            if not self.store.check([self._key(name)]):
                return None
            return json.loads(self.store.get(self._key(name)))
        except (RuntimeError, OSError, ValueError):
            return None

    def _set(self, name: str, value: object) -> None:
        try:
            self.store.set(self._key(name), json.dumps(value))
        except (RuntimeError, OSError):
            return

    def call(self, call: HangCall) -> HangCall:
        """Call a hang for every node; when two nodes call at once, the first one's call stands (its
        time names the one evidence folder they share)."""
        if self.alone:
            return call
        try:
            first = self.store.add(self._key("hang-calls"), 1) == 1
        except (RuntimeError, OSError):
            return call
        if first:
            self._set("hang", {"node": call.node, "called_at": call.called_at, "silent_s": call.silent_s})
            return call
        deadline = time.monotonic() + GATHER_TIMEOUT_S
        while time.monotonic() < deadline:
            if (standing := self.called()) is not None:
                return standing
            time.sleep(0.05)
        return call

    def called(self) -> HangCall | None:
        """A hang another node called, if any."""
        if self.alone:
            return None
        value = self._get("hang")
        return HangCall(int(value["node"]), float(value["called_at"]), float(value["silent_s"])) if value else None

    def views(self, mine: list[RankView], timeout_s: float = GATHER_TIMEOUT_S) -> list[RankView]:
        """Every node's rank views: this node's, and the others' as they arrive within ``timeout_s``."""
        if self.alone:
            return mine
        self._set(f"views/node{self.node}", [v.to_json() for v in mine])
        gathered = {self.node: mine}
        deadline = time.monotonic() + timeout_s
        while len(gathered) < self.nodes and time.monotonic() < deadline:
            for node in range(self.nodes):
                if node not in gathered and (value := self._get(f"views/node{node}")) is not None:
                    gathered[node] = [RankView.from_json(v) for v in value]
            time.sleep(0.1)
        return [view for views in gathered.values() for view in views]
