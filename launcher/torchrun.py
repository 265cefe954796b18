"""The one place that spells torchrun flags: a JobSpec plus a rendezvous become torchrun argv."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from launcher.contract import AGENT_MODULE, LOG_PREFIX_TEMPLATE, SAFE_PATH_FLAG
from launcher.spec import JobSpec
from launcher.timeouts import rdzv_conf


@dataclass(frozen=True)
class Rendezvous:
    """Where and how one node's agent meets the others.

    ``static`` needs a fixed node count and this node's rank (fast: no c10d round trips);
    ``c10d`` lets torchrun assign ranks and supports elastic MIN:MAX and restarts across nodes.
    """

    backend: Literal["static", "c10d"]
    host: str
    port: int | str
    run_id: str = "gangrun"
    node_rank: int | str | None = None
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def torchrun_args(spec: JobSpec, rdzv: Rendezvous, log_dir: str | None = None) -> list[str]:
    """torchrun's flags and the entrypoint for one node, without the program name.

    ``rdzv`` fields may be shell expressions (``$SLURM_NODEID``) where a target renders a script.
    """
    args = [
        f"--nnodes={spec.nnodes}",
        f"--nproc-per-node={spec.nproc_per_node}",
        f"--max-restarts={spec.max_restarts}",
    ]
    # The spec's own timeouts (launcher.timeouts) over the engine's choices.
    conf = {**rdzv.conf, **rdzv_conf(spec, rdzv.backend)}
    if rdzv.backend == "static":
        if spec.nnodes.elastic:
            raise ValueError("static rendezvous cannot serve an elastic node range")
        args += [
            f"--node-rank={rdzv.node_rank if rdzv.node_rank is not None else 0}",
            f"--master-addr={rdzv.host}",
            f"--master-port={rdzv.port}",
        ]
    else:
        args += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv.endpoint}", f"--rdzv-id={rdzv.run_id}"]
    if conf:
        args.append("--rdzv-conf=" + ",".join(f"{k}={v}" for k, v in sorted(conf.items())))
    if log_dir is not None:
        args.append(f"--log-dir={log_dir}")
    args += ["--tee=3", f"--log-line-prefix-template={LOG_PREFIX_TEMPLATE}"]
    return [*args, *spec.entrypoint.argv()]


def agent_flags(spec: JobSpec, stop_grace_s: int, status_dir: str | None = None,
                verdict_to_launcher: bool = False, pass_notice: bool = False) -> list[str]:
    """The agent's own flags, before torchrun's (launcher.agent.guard.split_agent_args reads them).

    ``stop_grace_s`` is how long the workers get to save after a stop signal: each engine's own
    budget for it (the local stop grace, Slurm's signal lead, the pod's checkpoint budget).
    ``status_dir`` is where the agent publishes its ranks for ``gangrun status`` and ``stacks``.
    ``verdict_to_launcher``: the launcher prints the job's verdict line, the agent only writes its own.
    ``pass_notice``: the scheduler's notice reaches only the agent, which passes it to every worker.
    """
    flags = [f"--hang-timeout={spec.hang_timeout}", f"--stop-grace={stop_grace_s}"]
    if spec.pg_timeout is not None:
        flags.append(f"--pg-timeout={spec.pg_timeout}")
    if status_dir is not None:
        flags.append(f"--status-dir={status_dir}")
    if verdict_to_launcher:
        flags.append("--verdict-to-launcher")
    if pass_notice:
        flags.append("--pass-notice")
    return flags


def agent_launch(python: str) -> list[str]:
    """How every engine starts a node's agent: ``python -P -m launcher.agent``.

    ``-P`` (Python 3.11+) keeps the working directory off ``sys.path``, so a user's own
    ``launcher/`` package next to their script can never run in place of the agent.
    """
    return [python, SAFE_PATH_FLAG, "-m", AGENT_MODULE]
