"""The checks that take milliseconds and need no other node: every agent runs them before its rendezvous.

No process is started here and nothing waits on the network beyond one name lookup, so an agent
that runs them starts as fast as before. The port check is not among them: in a local multi-node
run every node's agent shares this machine, and node 0's has bound the port before the others look.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from launcher.doctor import checks, probes
from launcher.doctor.result import Check, ok
from launcher.spec import NodeRange

# A pod's headless-Service name resolves only once that pod runs: a lookup that fails there may
# succeed in a minute, so inside Kubernetes it warns and torchrun's own retries take over.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


@dataclass(frozen=True)
class NodeLayout:
    """What one node's agent is told: where every node meets, and at what scale."""

    host: str | None  # None: a free loopback port picked at run time
    port: int | None
    nnodes: NodeRange
    nproc_per_node: int | str
    gpus_per_node: int = 0


def in_slurm_allocation(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("SLURM_JOB_ID"))


def slurm_topology_applies(layout: NodeLayout, environ: Mapping[str, str]) -> bool:
    """Inside an allocation, unless the rendezvous is on loopback: then every node runs on this machine
    (`gangrun run` inside salloc), and the allocation's node count says nothing about it."""
    return in_slurm_allocation(environ) and not (layout.host is not None and checks.is_loopback_name(layout.host))


def resolve_check(layout: NodeLayout, environ: Mapping[str, str]) -> Check:
    if layout.host is None:
        return ok("rdzv_endpoint", "a free loopback port is picked at run time")
    addresses, error = probes.resolve(layout.host)
    return checks.check_resolves(layout.host, addresses, error, "warn" if KUBERNETES_ENV in environ else "fail")


def topology_checks(layout: NodeLayout, environ: Mapping[str, str]) -> list[Check]:
    """--nnodes against SLURM_NNODES, and one agent task per node."""
    found: list[Check] = []
    if environ.get("SLURM_NNODES", "").isdigit():
        found.append(checks.check_nnodes(layout.nnodes, int(environ["SLURM_NNODES"])))
    # SLURM_NTASKS_PER_NODE exists only where it was asked for; SLURM_TASKS_PER_NODE always.
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        found.append(checks.check_tasks_per_node(per_node))
    return found


def gpu_check(layout: NodeLayout, environ: Mapping[str, str], counted: int | None = None) -> Check:
    """``counted``: a count from a slower source (nvidia-smi) where CUDA_VISIBLE_DEVICES is unset."""
    visible, source = probes.visible_gpus(environ)
    if counted is not None and "CUDA_VISIBLE_DEVICES" not in environ:
        visible, source = counted, "nvidia-smi -L"
    return checks.check_gpus(visible, source, layout.nproc_per_node, layout.gpus_per_node)


def processes(layout: NodeLayout, environ: Mapping[str, str]) -> int:
    """Worker processes on this node; auto is one per GPU, else one per CPU (torchrun's rule)."""
    if isinstance(layout.nproc_per_node, int):
        return layout.nproc_per_node
    if str(layout.nproc_per_node).isdigit():
        return int(layout.nproc_per_node)
    gpus = probes.visible_gpus(environ)[0]
    return gpus if gpus and layout.nproc_per_node in ("auto", "gpu") else os.cpu_count() or 1


def shm_check(layout: NodeLayout, environ: Mapping[str, str], workers: int | None) -> Check:
    return checks.check_shm(probes.free_bytes(probes.SHM), processes(layout, environ), workers)


def cheap_checks(layout: NodeLayout, environ: Mapping[str, str] = os.environ,
                 slurm_topology: bool | None = None) -> list[Check]:
    """The millisecond checks, in the order a user reads them; ``slurm_topology`` None: decided from the env."""
    topology = slurm_topology_applies(layout, environ) if slurm_topology is None else slurm_topology
    # Slurm says how many GPUs this node was given; only then were GPUs asked for.
    given = environ.get("SLURM_GPUS_ON_NODE", "")
    gpus = int(given) if topology and given.isdigit() else 0
    asked = NodeLayout(layout.host, layout.port, layout.nnodes, layout.nproc_per_node,
                       max(layout.gpus_per_node, gpus))
    return [resolve_check(layout, environ), *(topology_checks(layout, environ) if topology else []),
            gpu_check(asked, environ), shm_check(layout, environ, None)]
