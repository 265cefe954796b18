"""The agents `gangrun run` starts, as pure data: dry runs and golden tests see exactly what runs."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from launcher.engines.local.container import container_engine, container_prefix
from launcher.images import IMAGE_PYTHON
from launcher.spec import JobSpec
from launcher.torchrun import Rendezvous, agent_flags, agent_launch, torchrun_args

LOOPBACK = "127.0.0.1"
# What a dry run prints in place of the values picked fresh at run time.
DRY_RUN_PORT, DRY_RUN_ID = 29500, "RUNID"


@dataclass(frozen=True)
class ContainerRun:
    """How `gangrun run --image` starts each agent: the engine, the working directory, the user (uid:gid)."""

    engine: str
    workdir: str
    user: str


@dataclass(frozen=True)
class AgentCommand:
    """One node's agent: its argv and the variables it adds to the caller's environment."""

    node: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        assignments = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*assignments, shlex.join(self.argv)])


def default_threads(spec: JobSpec, cpu_count: int) -> int:
    """CPU threads per worker when all of this machine's workers share its cores."""
    procs = spec.nnodes.max * (spec.nproc_per_node if isinstance(spec.nproc_per_node, int) else cpu_count)
    return max(1, cpu_count // max(1, procs))


def render_local(
    spec: JobSpec,
    port: int,
    run_id: str,
    python: str = sys.executable,
    cpu_count: int = os.cpu_count() or 1,
    environ: Mapping[str, str] = os.environ,
    stop_grace_s: int = 30,
    folder: str | None = None,
    container: ContainerRun | None = None,
) -> list[AgentCommand]:
    """Every node's agent on this machine; with ``folder``, the run's handle folder (logs and status).

    One node with a fixed count uses static rendezvous (about 2.5 s faster to start than c10d);
    several nodes, an elastic range or a given endpoint use c10d, as a cluster would. With
    ``container`` (``--image``) each agent runs in its own container of that image.
    """
    env = {"PYTHONUNBUFFERED": "1"}
    if "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(default_threads(spec, cpu_count))
    env.update(spec.env)
    host, _, given_port = (spec.rdzv_endpoint or "").rpartition(":")
    use_c10d = spec.rdzv_endpoint is not None or spec.nnodes.max > 1
    commands = []
    for node in range(spec.nnodes.max):
        if use_c10d:
            # All local agents start together: don't wait torchrun's default 30 s for more nodes.
            conf = {"last_call_timeout": "1"} if spec.nnodes.elastic else {}
            rdzv = Rendezvous("c10d", host or LOOPBACK, given_port or port, run_id, conf=conf)
        else:
            rdzv = Rendezvous("static", LOOPBACK, port, run_id, node_rank=node)
        # gangrun run prints the job's verdict from every node's, once (launcher.engines.local.run).
        flags = agent_flags(spec, stop_grace_s, f"{folder}/status" if folder else None, verdict_to_launcher=True,
                            pass_notice=container is not None)
        logs = f"{folder}/logs/node{node}" if folder else None
        prefix: list[str] = []
        if container is not None:
            prefix = container_prefix(container.engine, spec, f"gangrun-{run_id}-node{node}",
                                      [folder] if folder else [], container.workdir, list(env), container.user)
        launch = agent_launch(IMAGE_PYTHON if container is not None else python)
        commands.append(AgentCommand(node, [*prefix, *launch, *flags, *torchrun_args(spec, rdzv, logs)], env))
    return commands


def render_text(spec: JobSpec, stop_grace_s: int, container: ContainerRun | None = None) -> str:
    """What `gangrun run --dry-run` prints: one shell line per node's agent."""
    commands = render_local(spec, port=DRY_RUN_PORT, run_id=f"{spec.job_name}-{DRY_RUN_ID}",
                            stop_grace_s=stop_grace_s, container=container)
    lines = [f"# gangrun run: {len(commands)} node agent(s) on this machine; "
             f"port {DRY_RUN_PORT} and {DRY_RUN_ID} are picked fresh at run time"]
    lines += [cmd.shell_line() for cmd in commands]
    return "\n".join(lines)


def container_run(spec: JobSpec) -> ContainerRun | None:
    """With --image: the engine on PATH, this working directory and user; None runs on this machine's Python."""
    if spec.image is None:
        return None
    return ContainerRun(container_engine(), os.getcwd(), f"{os.getuid()}:{os.getgid()}")
