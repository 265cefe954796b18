"""The checks' decisions, as pure functions of what the probes found: each returns one Check with its fix."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Literal

from launcher.doctor.result import Check, Status, fail, ok, warn
from launcher.spec import NodeRange

MIB = 1 << 20
# What one DataLoader worker needs in /dev/shm: its prefetch_factor (2) batches on their way to the
# main process. A micro-batch of 128 ImageNet-sized images (3x224x224 float32) is 77 MiB; two, with
# headroom, round up to 256 MiB. Docker's default /dev/shm of 64 MiB is the classic "bus error".
SHM_PER_WORKER = 256 * MIB
# Below this much free space at a checkpoint location a real model's checkpoint will not fit.
CHECKPOINT_FREE_WARN = 1 << 30
# The variables gloo and NCCL read to pick the interface their sockets use.
IFNAME_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
_TASKS_PER_NODE = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")

Reach = Literal["local", "accepted", "refused", "timeout", "unreachable"]


def is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address as written: a rendezvous there keeps every node on this machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_resolves(host: str, addresses: tuple[str, ...], error: str | None, severity: Status = "fail") -> Check:
    if addresses:
        return ok("rdzv_endpoint", f"{host} resolves to {', '.join(addresses[:3])}")
    return Check("rdzv_endpoint", severity, f"host '{host}' does not resolve ({error or 'no address'})",
                 "use a host name every node resolves, e.g. --rdzv-endpoint node0:29500, or fix DNS or /etc/hosts")


def check_reachable(host: str, port: int, reach: Reach) -> Check:
    """Reachable means a route exists: the address is this machine's, or a connect to the port is answered
    (accepted, or refused because nothing listens yet). Only silence (a timeout, no route) fails."""
    if reach == "local":
        return ok("rdzv_endpoint", f"{host} is this machine")
    if reach in ("accepted", "refused"):
        return ok("rdzv_endpoint", f"{host}:{port} answers ({reach}), so this node reaches it")
    return fail("rdzv_endpoint", f"{host}:{port} does not answer ({reach})",
                "check the host is up and that no firewall drops the port between the nodes")


def check_port_free(host: str, port: int, bind_error: str | None) -> Check:
    if bind_error is None:
        return ok("rdzv_port", f"port {port} is free on {host}, where the rendezvous store listens")
    return fail("rdzv_port", f"port {port} on {host} is in use ({bind_error})",
                f"stop what listens there (ss -ltnp 'sport = :{port}') or pick another port in --rdzv-endpoint")


def check_nnodes(nnodes: NodeRange, slurm_nnodes: int) -> Check:
    if nnodes.min <= slurm_nnodes <= nnodes.max:
        return ok("nnodes", f"--nnodes {nnodes} fits the allocation's {slurm_nnodes} node(s) (SLURM_NNODES)")
    return fail("nnodes", f"--nnodes {nnodes} but the allocation has {slurm_nnodes} node(s) (SLURM_NNODES)",
                f"use --nnodes {slurm_nnodes}, or allocate {nnodes} node(s) (sbatch/srun --nodes {nnodes.max})")


def tasks_per_node(text: str) -> list[int]:
    """SLURM_TASKS_PER_NODE's counts, one per node: ``2(x3),1`` is [2, 2, 2, 1]; [] when unreadable."""
    counts: list[int] = []
    for part in text.split(","):
        match = _TASKS_PER_NODE.match(part.strip())
        if match is None:
            return []
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def check_tasks_per_node(text: str) -> Check:
    counts = tasks_per_node(text)
    if counts and all(count == 1 for count in counts):
        return ok("ntasks_per_node", "one agent task per node")
    return fail("ntasks_per_node", f"{text or '?'} tasks per node (SLURM_TASKS_PER_NODE); each task would start "
                "its own torchrun agent", "run one task per node: srun --ntasks-per-node=1")


def check_gpus(visible: int, source: str, nproc_per_node: int | str, gpus_per_node: int) -> Check:
    """Asked-for GPUs must be visible, one per worker process; without a GPU request anything goes."""
    if gpus_per_node == 0:
        return ok("gpus_per_node", f"no GPUs asked for; {visible} visible ({source})")
    if visible < gpus_per_node:
        return fail("gpus_per_node", f"{gpus_per_node} GPU(s) asked for per node but {visible} visible ({source})",
                    "check the allocation's --gpus-per-node and CUDA_VISIBLE_DEVICES")
    if isinstance(nproc_per_node, int) and visible < nproc_per_node:
        return fail("nproc_per_node", f"{nproc_per_node} processes per node but {visible} GPU(s) visible ({source})",
                    f"use --nproc-per-node {visible} or ask for more GPUs")
    return ok("gpus_per_node", f"{visible} GPU(s) visible ({source}) for {nproc_per_node} process(es)")


def check_shm(free: int | None, nproc_per_node: int, workers: int | None) -> Check:
    """``workers`` None: not known here, so one DataLoader worker per process is assumed."""
    if free is None:
        return warn("shm", "no /dev/shm on this node", "DataLoader workers need it: mount a tmpfs at /dev/shm")
    if workers == 0:
        return ok("shm", f"/dev/shm has {free // MIB} MiB free; no DataLoader workers need it")
    assumed = workers is None
    per_process = 1 if workers is None else workers
    need = nproc_per_node * per_process * SHM_PER_WORKER
    what = (f"{nproc_per_node} process(es) x {per_process} DataLoader worker(s)"
            + (" (assumed)" if assumed else "") + f" x {SHM_PER_WORKER // MIB} MiB")
    if free >= need:
        return ok("shm", f"/dev/shm has {free // MIB} MiB free for {what}")
    return warn("shm", f"/dev/shm has {free // MIB} MiB free, short of {need // MIB} MiB for {what}",
                "give it more (docker --shm-size, --shm-size on Kubernetes) or use fewer DataLoader workers")


def check_location(location: str, free: int | None, error: str | None) -> Check:
    if error is not None:
        return fail("checkpoint", f"cannot write, read and delete a file at {location} ({error})",
                    "pick a writable location with free space, or fix its permissions or credentials")
    if free is not None and free < CHECKPOINT_FREE_WARN:
        return warn("checkpoint", f"{location} is writable but has only {free // MIB} MiB free",
                    "free some space or pick a larger filesystem for checkpoints")
    room = "" if free is None else f", {free // MIB} MiB free"
    return ok("checkpoint", f"{location} is writable{room}")


def check_same_everywhere(name: str, what: str, by_node: Mapping[str, str], fix: str) -> Check:
    """One value per node (its torch version, what it read from a token file): every node must agree."""
    values = sorted(set(by_node.values()))
    if len(values) == 1:
        return ok(name, f"{what}: the same on {len(by_node)} node(s) ({values[0]})")
    spread = "; ".join(f"{node}: {value}" for node, value in sorted(by_node.items()))
    return fail(name, f"{what} differs between nodes ({spread})", fix)


def check_interfaces(interfaces: Mapping[str, str], environ: Mapping[str, str]) -> Check:
    """Several non-loopback IPv4 interfaces and no *_SOCKET_IFNAME: gloo and NCCL may each pick another one."""
    chosen = {var: environ[var] for var in IFNAME_VARS if environ.get(var)}
    if chosen:
        return ok("network", ", ".join(f"{var}={value}" for var, value in chosen.items()))
    names = ", ".join(f"{name} {address}" for name, address in sorted(interfaces.items()))
    if len(interfaces) <= 1:
        return ok("network", f"one IPv4 interface besides loopback ({names or 'none'})")
    first = sorted(interfaces)[0]
    return warn("network", f"{len(interfaces)} IPv4 interfaces ({names}) and no NCCL_SOCKET_IFNAME or "
                "GLOO_SOCKET_IFNAME: gloo and NCCL pick one themselves",
                f"name the one the nodes reach each other on: --env NCCL_SOCKET_IFNAME={first} "
                f"--env GLOO_SOCKET_IFNAME={first}")


def check_image(image: str | None) -> Check:
    """The spec's checks refuse an image that is no reference (launcher.images); here: is one set at all."""
    if image is None:
        return warn("image", "no --image: the default gangrun:latest exists only where `gangrun build` ran",
                    "push the image to a registry the cluster pulls from and pass --image REGISTRY/gangrun:TAG")
    return ok("image", image)


def check_kubectl(path: str | None, cluster_error: str | None) -> Check:
    if path is None:
        return fail("kubectl", "kubectl is not on PATH",
                    "install kubectl: `gangrun submit --target k8s` applies the objects with it")
    if cluster_error is not None:
        return warn("kubectl", f"{path} reaches no cluster ({cluster_error})",
                    "check the current context: kubectl config current-context")
    return ok("kubectl", f"{path} reaches the cluster")
