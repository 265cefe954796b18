"""JobSpec: what runs and at what scale, the same for every engine, validated once. No engine's options live here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from launcher.agent.watchdog import HangTimeout
from launcher.errors import SpecError
from launcher.options import option

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")
_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d{1,2}):(\d{2}):(\d{2})$")
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


def parse_env_pairs(pairs: list[str], field_name: str = "env") -> dict[str, str]:
    """``KEY=VALUE`` strings into a dict; the value may be empty and may hold '='."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError(field_name, f"'{pair}' has no '='", "write it as KEY=VALUE")
        env[key] = value
    return env


@dataclass(frozen=True)
class Mount:
    """A host folder seen at ``target`` inside the container (``SRC:DST`` or ``SRC:DST:ro``)."""

    source: str
    target: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


def parse_mount(text: str) -> Mount:
    """``SRC:DST[:ro]``, both absolute; spaces and quotes are fine (they are quoted), separators are not."""
    parts = text.split(":")
    read_only = len(parts) == 3 and parts[2] == "ro"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not read_only):
        raise SpecError("mount", f"'{text}' is not SRC:DST or SRC:DST:ro (a path may hold no ':')",
                        "use e.g. --mount /data:/data")
    source, target = parts[0], parts[1]
    for path in (source, target):
        if not path.startswith("/"):
            raise SpecError("mount", f"'{path}' in '{text}' is not an absolute path", "use e.g. --mount /data:/data")
        if "," in path or any(ord(c) < 32 for c in path):
            raise SpecError("mount", f"'{path}' holds a ',' or a control character, which container runtimes "
                            "read as separators", "rename the folder or bind one above it")
    return Mount(source, target, read_only)


def bind_mounts(folders: list[str], mounts: tuple[str, ...]) -> list[Mount]:
    """What a container of the job sees: ``folders`` at their own paths, then each ``--mount``; one per target."""
    found = {m.target: m for m in (*(Mount(f, f) for f in folders), *map(parse_mount, mounts))}
    return list(found.values())


def time_limit_seconds(text: str) -> int:
    """Seconds in a ``[D-]HH:MM:SS`` time limit; SpecError (field ``time``) for anything else.

    Every engine reads the limit through this one function, so a value is refused or accepted
    alike for Slurm and Kubernetes.
    """
    match = _TIME_LIMIT.match(text)
    if match is None:
        raise SpecError("time", f"'{text}' is not HH:MM:SS or D-HH:MM:SS", "use e.g. --time 02:00:00")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    if minutes > 59 or seconds > 59:
        raise SpecError("time", f"'{text}' has minutes or seconds above 59", "use e.g. --time 01:30:00")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


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


@dataclass(frozen=True)
class JobSpec:
    """One job: what runs, on how many nodes and processes, with which environment, for how long."""

    entrypoint: Entrypoint
    name: str = option("", help="the job's name: the Slurm job, the Kubernetes objects, the run id",
                       default_text="the script's or module's name")
    nnodes: NodeRange = option(NodeRange(1, 1), metavar="N|MIN:MAX", parse=parse_nnodes,
                               help="nodes, each running one torchrun agent; MIN:MAX is an elastic range")
    nproc_per_node: int | Literal["auto"] = option(
        1, metavar="K|auto", parse=parse_nproc_per_node,
        help="worker processes per node; auto means one per GPU, else one per CPU (torchrun's rule)")
    max_restarts: int = option(0, metavar="R",
                               help="times torchrun restarts all workers after one fails, before it gives up")
    env: dict[str, str] = option(metavar="KEY=VALUE", default_factory=dict,
                                 help="a variable every worker gets; repeat the flag for more")
    rdzv_endpoint: str | None = option(
        None, metavar="HOST:PORT", help="where every node's agent meets (c10d rendezvous)",
        default_text="a free loopback port locally; the allocation's first host on Slurm")
    image: str | None = option(None, help="the container image every node runs",
                               default_text="bare metal locally and on Slurm; gangrun:latest on Kubernetes")
    mounts: tuple[str, ...] = option((), flag="--mount", metavar="SRC:DST[:ro]",
                                     help="a host folder every node's container sees at DST (a bind on Slurm, a "
                                          "hostPath on Kubernetes); repeat for more")
    gpus_per_node: int = option(0, metavar="G", help="GPUs each node asks the scheduler for")
    time: str | None = option(None, metavar="[D-]HH:MM:SS",
                              help="time limit of the whole job, after which the scheduler stops it")
    hang_timeout: str = option("auto", metavar="S|auto|off",
                               help="seconds a rank may make no progress before the job is called hung, its "
                                    "stacks taken and it is stopped (exit 124) or restarted; auto derives it from "
                                    "observed step times, off never calls a hang")
    rdzv_join_timeout: int | None = option(None, metavar="S", default_text="600, torchrun's",
                                           help="seconds a node's agent waits for the others to join the rendezvous")
    rdzv_last_call_timeout: int | None = option(
        None, metavar="S", default_text="30, torchrun's; 1 for a local elastic run",
        help="seconds an elastic rendezvous waits for more nodes once its minimum joined")
    store_timeout: int | None = option(None, metavar="S", default_text="60, torchrun's",
                                       help="seconds one read from the rendezvous store may take")
    pg_timeout: int | None = option(None, metavar="S", default_text="1800, torch's",
                                    help="seconds a collective waits for a rank before the process group fails")
    program_check: bool | None = option(
        None, help="run the program once in its check mode (GANGRUN_CHECK=1, the README's check-mode contract) "
                   "before anything starts or is submitted; its refusal stops here with exit 2",
        default_text="on for -m train, off for other programs")

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
        if self.rdzv_endpoint is not None:
            if not _HOST_PORT.match(self.rdzv_endpoint):
                raise SpecError("rdzv_endpoint", f"'{self.rdzv_endpoint}' is not HOST:PORT",
                                "use e.g. --rdzv-endpoint node0:29400")
            if not 0 < int(self.rdzv_endpoint.rsplit(":", 1)[1]) < 65536:
                raise SpecError("rdzv_endpoint", f"port in '{self.rdzv_endpoint}' is out of range", "use 1-65535")
        if self.time is not None:
            time_limit_seconds(self.time)
        for mount in self.mounts:
            parse_mount(mount)
        for key in ("rdzv_join_timeout", "rdzv_last_call_timeout", "store_timeout", "pg_timeout"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise SpecError(key, f"{value} seconds", "use 1 or more, or leave it unset for the default")
        try:
            HangTimeout.parse(self.hang_timeout)
        except ValueError as err:
            raise SpecError("hang_timeout", str(err), "use e.g. --hang-timeout 300, auto or off") from None
        return self
