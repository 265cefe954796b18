"""JobSpec: what to run and at what scale, the same for every target, validated once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from launcher.errors import SpecError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class NodeRange:
    """How many nodes: a fixed count (min == max) or an elastic range torchrun accepts."""

    min: int
    max: int

    @property
    def elastic(self) -> bool:
        return self.min != self.max

    def __str__(self) -> str:
        return str(self.max) if not self.elastic else f"{self.min}:{self.max}"


def parse_nnodes(text: str | int) -> NodeRange:
    """Parse ``N`` or ``MIN:MAX`` as torchrun does, with errors that say the fix."""
    raw = str(text).strip()
    parts = raw.split(":")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise SpecError("nnodes", f"'{raw}' is not N or MIN:MAX", "use e.g. --nnodes 2 or --nnodes 1:4")
    lo, hi = (int(parts[0]), int(parts[-1]))
    if lo < 1:
        raise SpecError("nnodes", f"'{raw}' asks for fewer than 1 node", "use at least 1")
    if lo > hi:
        raise SpecError("nnodes", f"'{raw}' has MIN greater than MAX", f"use --nnodes {hi}:{lo}")
    return NodeRange(lo, hi)


def parse_nproc_per_node(text: str | int) -> int | Literal["auto"]:
    raw = str(text).strip()
    if raw == "auto":
        return "auto"
    if not raw.lstrip("-").isdigit():
        raise SpecError("nproc_per_node", f"'{raw}' is not a number", "use a count like 2, or auto")
    value = int(raw)
    if value < 1:
        raise SpecError("nproc_per_node", f"{value} processes per node", "use 1 or more, or auto")
    return value


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings into a dict; the value may be empty and may hold '='."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError("env", f"'{pair}' has no '='", "write it as --env KEY=VALUE")
        env[key] = value
    return env


@dataclass(frozen=True)
class Entrypoint:
    """The program every rank runs: a module (``-m pkg``) or a script path, with its arguments."""

    target: str
    is_module: bool
    args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """What follows torchrun's own flags: ``-m module args`` or ``script args``."""
        head = ["-m", self.target] if self.is_module else [self.target]
        return [*head, *self.args]

    @property
    def short_name(self) -> str:
        base = self.target.rsplit(".", 1)[-1] if self.is_module else self.target.rsplit("/", 1)[-1]
        return base.removesuffix(".py") or "job"


# Slurm names: what sbatch accepts and nothing a shell or an #SBATCH line would read differently.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SLURM_PARTITIONS = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
_SLURM_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-&|\[\]*:,()!]+$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/~+=,@]+$")
# sbatch --signal takes sig_time as an integer 0-65535 (sbatch(1)).
MAX_SIGNAL_GRACE_S = 65535


def time_limit_seconds(text: str) -> int:
    """Seconds in a validated ``[D-]HH:MM:SS`` time limit (every target reads the same limit)."""
    days, hours, minutes, seconds = _SLURM_TIME.match(text).groups()  # type: ignore[union-attr]
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + int(seconds)


@dataclass(frozen=True)
class SlurmOptions:
    """Options only the Slurm target reads."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    signal_grace_s: int = 120
    requeue: bool = True
    max_requeues: int = 3
    # Where the batch script and logs go; the compute nodes must see it (default ~/.gangrun/slurm).
    job_dir: str | None = None
    # The Python on the compute nodes that has gangrun and torch (default: the one running gangrun).
    python: str | None = None

    def validate(self, time: str | None) -> None:
        """Check what sbatch would read, so a bad value stops here and nothing is submitted."""
        names = {"partition": (self.partition, _SLURM_PARTITIONS, "e.g. --partition gpu or gpu,debug"),
                 "account": (self.account, _SLURM_WORD, "e.g. --account my-project"),
                 "qos": (self.qos, _SLURM_WORD, "e.g. --qos high"),
                 "constraint": (self.constraint, _SLURM_CONSTRAINT, "e.g. --constraint 'a100&ib'"),
                 "mem": (self.mem, _SLURM_MEM, "use a size like 64G or 0 for all of the node's memory")}
        for name, (value, pattern, fix) in names.items():
            if value is not None and not pattern.match(value):
                raise SpecError(f"slurm.{name}", f"'{value}' is not a Slurm {name}", fix)
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SpecError("slurm.cpus_per_task", f"{self.cpus_per_task}", "use 1 or more")
        if not 1 <= self.signal_grace_s <= MAX_SIGNAL_GRACE_S:
            raise SpecError("slurm.signal_grace_s", f"{self.signal_grace_s} seconds",
                            f"use 1 to {MAX_SIGNAL_GRACE_S} (sbatch --signal's limit)")
        if self.max_requeues < 0:
            raise SpecError("slurm.max_requeues", f"{self.max_requeues} is negative", "use 0 or more")
        for name, value in (("job_dir", self.job_dir), ("python", self.python)):
            if value is not None and not _SAFE_PATH.match(value):
                raise SpecError(f"slurm.{name}", f"'{value}' has spaces, quotes or shell characters",
                                "use a plain path")
        if time is not None and _SLURM_TIME.match(time):
            _, _, minutes, seconds = _SLURM_TIME.match(time).groups()  # type: ignore[union-attr]
            if int(minutes) > 59 or int(seconds) > 59:
                raise SpecError("time", f"'{time}' has minutes or seconds above 59", "use e.g. --time 01:30:00")
            if self.requeue and time_limit_seconds(time) <= self.signal_grace_s:
                raise SpecError("slurm.signal_grace_s", f"{self.signal_grace_s} s is not shorter than --time {time}",
                                "ask for more time or a shorter --signal-grace")


K8S_KINDS = ("job", "jobset", "trainjob", "pytorchjob")


@dataclass(frozen=True)
class K8sOptions:
    """Options only the Kubernetes target reads (rendered by launcher.k8s_manifests)."""

    namespace: str | None = None
    kind: str = "job"
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    # Taint key -> effect it tolerates (operator Exists), e.g. nvidia.com/gpu=NoSchedule.
    tolerations: dict[str, str] = field(default_factory=dict)
    cpu: str | None = None
    memory: str | None = None
    # Memory-backed /dev/shm; the container runtime's default of 64 MB starves DataLoader workers.
    shm_size: str = "8Gi"
    # A ReadWriteMany PVC mounted at checkpoint_mount on every node.
    checkpoint_pvc: str | None = None
    checkpoint_mount: str = "/checkpoints"
    # VAR -> SECRET:KEY: object-store credentials read from a Secret by reference, never inline.
    secret_env: dict[str, str] = field(default_factory=dict)
    # Seconds a rank needs to save after SIGTERM; the pod's grace period is set above it.
    checkpoint_budget_s: int = 120
    # Whole-gang restarts (JobSet failurePolicy.maxRestarts; Indexed Job backoffLimit per node).
    gang_restarts: int = 0
    # TrainJob only: the (Cluster)TrainingRuntime to run on.
    runtime: str = "torch-distributed"


@dataclass(frozen=True)
class JobSpec:
    """One job: what runs, on how many nodes and processes, with which environment, where."""

    entrypoint: Entrypoint
    name: str = ""
    nnodes: NodeRange = NodeRange(1, 1)
    nproc_per_node: int | Literal["auto"] = 1
    max_restarts: int = 0
    env: dict[str, str] = field(default_factory=dict)
    rdzv_endpoint: str | None = None
    image: str | None = None
    gpus_per_node: int = 0
    time: str | None = None
    slurm: SlurmOptions = SlurmOptions()
    k8s: K8sOptions = K8sOptions()

    @property
    def job_name(self) -> str:
        return self.name or self.entrypoint.short_name

    def validate(self) -> JobSpec:
        """Check every field; raise SpecError naming the first bad one. Returns self for chaining."""
        if not _NAME.match(self.job_name):
            raise SpecError("name", f"'{self.job_name}' has characters other than letters, digits, '-', '_', '.'",
                            "pick a name like my-run-1")
        if self.max_restarts < 0:
            raise SpecError("max_restarts", f"{self.max_restarts} is negative", "use 0 or more")
        if self.gpus_per_node < 0:
            raise SpecError("gpus_per_node", f"{self.gpus_per_node} is negative", "use 0 or more")
        if (self.gpus_per_node and isinstance(self.nproc_per_node, int)
                and self.nproc_per_node > self.gpus_per_node):
            raise SpecError("nproc_per_node", f"{self.nproc_per_node} processes but {self.gpus_per_node} GPUs per node",
                            f"use --nproc-per-node {self.gpus_per_node} or ask for more GPUs")
        for key in self.env:
            if not _ENV_NAME.match(key):
                raise SpecError("env", f"'{key}' is not a valid variable name", "use letters, digits and _")
        if self.rdzv_endpoint is not None and not _HOST_PORT.match(self.rdzv_endpoint):
            raise SpecError("rdzv_endpoint", f"'{self.rdzv_endpoint}' is not HOST:PORT",
                            "use e.g. --rdzv-endpoint node0:29400")
        if self.rdzv_endpoint is not None and not 0 < int(self.rdzv_endpoint.rsplit(":", 1)[1]) < 65536:
            raise SpecError("rdzv_endpoint", f"port in '{self.rdzv_endpoint}' is out of range", "use 1-65535")
        if self.time is not None and not _SLURM_TIME.match(self.time):
            raise SpecError("time", f"'{self.time}' is not HH:MM:SS or D-HH:MM:SS", "use e.g. --time 02:00:00")
        if self.slurm.signal_grace_s < 1:
            raise SpecError("slurm.signal_grace_s", f"{self.slurm.signal_grace_s} seconds", "use 1 or more")
        if self.k8s.kind not in K8S_KINDS:
            raise SpecError("k8s.kind", f"'{self.k8s.kind}' is not a known kind", f"use one of: {', '.join(K8S_KINDS)}")
        if self.k8s.checkpoint_budget_s < 1:
            raise SpecError("k8s.checkpoint_budget_s", f"{self.k8s.checkpoint_budget_s} seconds", "use 1 or more")
        if self.k8s.gang_restarts < 0:
            raise SpecError("k8s.gang_restarts", f"{self.k8s.gang_restarts} is negative", "use 0 or more")
        if self.slurm.max_requeues < 0:
            raise SpecError("slurm.max_requeues", f"{self.slurm.max_requeues} is negative", "use 0 or more")
        return self

