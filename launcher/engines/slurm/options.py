"""Options only the Slurm engine reads, and the checks that keep a bad value from reaching sbatch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from launcher.engines.slurm.containers import check_container
from launcher.errors import SpecError
from launcher.options import option
from launcher.spec import JobSpec, time_limit_seconds

# Slurm names: what sbatch accepts and nothing a shell or an #SBATCH line would read differently.
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_.\-]+$")
_SLURM_PARTITIONS = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
_SLURM_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.\-&|\[\]*:,()!]+$")
_SLURM_MEM = re.compile(r"^\d+[KMGT]?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/~+=,@]+$")
# sbatch --signal takes sig_time as an integer 0-65535 (sbatch(1)).
MAX_SIGNAL_GRACE_S = 65535


@dataclass(frozen=True)
class SlurmOptions:
    """What the batch script asks Slurm for, beyond the job spec."""

    partition: str | None = option(None, metavar="P[,P]", help="partition(s) to run in (sbatch --partition)",
                                   default_text="the cluster's default")
    account: str | None = option(None, help="account the job is charged to (sbatch --account)",
                                 default_text="your default account")
    qos: str | None = option(None, help="quality of service (sbatch --qos)", default_text="the account's default")
    constraint: str | None = option(None, metavar="FEATURES",
                                    help="node features the nodes must have, e.g. 'a100&ib' (sbatch --constraint)")
    cpus_per_task: int | None = option(None, metavar="N",
                                       help="CPUs per node for the agent and its workers; also sets each "
                                            "worker's OMP_NUM_THREADS to N / nproc-per-node",
                                       default_text="the partition's default")
    mem: str | None = option(None, metavar="SIZE", help="memory per node, e.g. 64G, or 0 for all of it (sbatch --mem)",
                             default_text="the partition's default")
    signal_grace_s: int = option(120, flag="--signal-grace", metavar="S",
                                 help="seconds before the time limit Slurm sends USR2, so training saves and "
                                      "the job requeues")
    requeue: bool = option(True, help="requeue the job when training saved and exited 75 (preempted or at its "
                                      "time limit)")
    max_requeues: int = option(3, metavar="N", help="requeues at most, before a job that keeps asking ends")
    job_dir: str | None = option(None, metavar="DIR",
                                 help="where the batch script and one log per node go; the compute nodes must "
                                      "see the same path", default_text="~/.gangrun/slurm/NAME")
    python: str | None = option(None, metavar="PATH",
                                help="the Python on the compute nodes that has gangrun and torch",
                                default_text="the Python running gangrun; python in a container")
    container_runtime: str | None = option(
        None, metavar="NAME", help="run each node's agent in --image with pyxis (srun --container-image), "
                                   "apptainer, charliecloud (ch-run) or podman", default_text="none: bare metal")

    def validate(self, spec: JobSpec) -> None:
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
        check_container(spec, self.container_runtime)
        if spec.time is not None and self.requeue and time_limit_seconds(spec.time) <= self.signal_grace_s:
            raise SpecError("slurm.signal_grace_s", f"{self.signal_grace_s} s is not shorter than --time {spec.time}",
                            "ask for more time or a shorter --signal-grace")
