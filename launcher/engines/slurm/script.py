"""The sbatch script for a JobSpec: pure text, so dry runs, golden tests and shellcheck see exactly it."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from launcher import __version__
from launcher.contract import EXIT_REQUEUE, NOTICE_SIGNAL
from launcher.engines.slurm.containers import quoted, setup_lines, srun_flags, wrapper
from launcher.engines.slurm.options import SlurmOptions
from launcher.images import IMAGE_PYTHON
from launcher.spec import JobSpec, bind_mounts
from launcher.torchrun import Rendezvous, agent_flags, agent_launch, torchrun_args

# Without "B:", Slurm sends the notice to every process of every step, so each worker gets it
# directly (measured: scancel --signal=USR2 and --signal=USR2@50 alike).
NOTICE = NOTICE_SIGNAL.name.removeprefix("SIG")
# torchrun's c10d store port: from the job id, so jobs sharing a head node do not collide, and
# below Linux's ephemeral range (32768+) so no outgoing connection holds it.
PORT_BASE, PORT_SPAN = 20000, 12000
# After the first node's agent exits, how long the others get before srun stops them. Ranks that
# agreed to save exit within seconds of each other; a crashed node's peers are stopped here. Not
# --kill-on-bad-exit: it would kill the other nodes mid-exit and srun would report their signal,
# not the 75 that asks for a requeue (srun returns the highest code of all tasks).
STRAGGLER_WAIT_S = 60

# Shell variables the script sets and torchrun's flags name; the shell expands them at run time.
HEAD_NODE, RDZV_PORT, JOB_ID = "${head_node}", "${rdzv_port}", "${SLURM_JOB_ID}"
_LIVE = re.compile("(" + "|".join(re.escape(v) for v in (HEAD_NODE, RDZV_PORT, JOB_ID)) + ")")

# Lines the plain scripts in slurm/ share word for word (tests/test_slurm_script.py keeps them in step).
HEAD_NODE_LINE = 'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
RDZV_PORT_LINE = f"rdzv_port=$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))"
RESTARTS_LINE = "restarts=${SLURM_RESTART_COUNT:-0}"
REQUEUE_LINE = 'scontrol requeue "$SLURM_JOB_ID" && exit 0'
# Single-quoted words are literal on purpose: user values, and the ${rank} torchrun expands itself.
SHELLCHECK_LITERALS = "# shellcheck disable=SC2016  # single quotes: literal on purpose"


@dataclass(frozen=True)
class JobFiles:
    """Where one job's files live; Slurm fills in %j (job id) and %N (node name)."""

    folder: Path

    @property
    def batch_log(self) -> str:
        return f"{self.folder}/%j.batch.log"

    @property
    def node_log(self) -> str:
        return f"{self.folder}/%j.%N.log"

    def logs(self, job_id: str) -> list[Path]:
        """The batch log first, then one log per node, in name order."""
        return [self.folder / f"{job_id}.batch.log",
                *sorted(p for p in self.folder.glob(f"{job_id}.*.log") if not p.name.endswith(".batch.log"))]


def shell_word(arg: str) -> str:
    """Quote one argument; only the script's own rendezvous variables stay live for the shell."""
    if not _LIVE.search(arg):
        return shlex.quote(arg)
    # re.split with a group puts the variables at the odd indices; everything else is escaped.
    parts = _LIVE.split(arg)
    return '"' + "".join(p if i % 2 else re.sub(r'(["$`\\])', r"\\\1", p) for i, p in enumerate(parts)) + '"'


def sbatch_directives(spec: JobSpec, s: SlurmOptions, files: JobFiles) -> list[str]:
    """#SBATCH lines: one task per node (each runs torchrun), the notice signal, requeue, logs."""
    nodes = str(spec.nnodes.max) if not spec.nnodes.elastic else f"{spec.nnodes.min}-{spec.nnodes.max}"
    options: list[tuple[str, object]] = [
        ("job-name", spec.job_name), ("nodes", nodes), ("ntasks-per-node", 1),
        ("gpus-per-node", spec.gpus_per_node or None), ("cpus-per-task", s.cpus_per_task), ("mem", s.mem),
        ("partition", s.partition), ("account", s.account), ("qos", s.qos), ("constraint", s.constraint),
        ("time", spec.time), ("signal", f"{NOTICE}@{s.signal_grace_s}"),
        ("requeue" if s.requeue else "no-requeue", True),
        # A requeued job appends to its logs; the default truncates them on restart.
        ("open-mode", "append"), ("output", files.batch_log),
    ]
    return [f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={value}"
            for key, value in options if value is not None]


def environment(spec: JobSpec, options: SlurmOptions) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if options.cpus_per_task and isinstance(spec.nproc_per_node, int):
        env["OMP_NUM_THREADS"] = str(max(1, options.cpus_per_task // spec.nproc_per_node))
    env.update(spec.env)
    return env


def status_dir(files: JobFiles) -> str:
    """Where every node's agent publishes its ranks (gangrun status, stacks): the job folder, shared."""
    return f"{files.folder}/{JOB_ID}.status"


def agent_command(spec: JobSpec, python: str, options: SlurmOptions, files: JobFiles) -> tuple[list[str], list[str]]:
    """One node's agent as (launcher and torchrun flags, entrypoint), each word shell-quoted.

    The flags come from the one torchrun function; the rendezvous from the allocation at run time.
    """
    if spec.rdzv_endpoint is not None:
        host, _, port = spec.rdzv_endpoint.rpartition(":")
        rdzv = Rendezvous("c10d", host, port, JOB_ID)
    else:
        rdzv = Rendezvous("c10d", HEAD_NODE, RDZV_PORT, JOB_ID)
    # The workers save within the signal's lead on the time limit.
    # Under podman the workers live in the container's own process tree, which Slurm's notice misses.
    args = [*agent_flags(spec, options.signal_grace_s, status_dir(files),
                         pass_notice=options.container_runtime == "podman"), *torchrun_args(spec, rdzv)]
    split = len(args) - len(spec.entrypoint.argv())
    # The entrypoint's own arguments are always literal: only torchrun's flags name our variables.
    return ([*map(shlex.quote, agent_launch(python)), *map(shell_word, args[:split])],
            [shlex.quote(a) for a in args[split:]])


def srun_command(options: SlurmOptions, files: JobFiles) -> list[str]:
    args = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=0", f"--wait={STRAGGLER_WAIT_S}", "--unbuffered",
            "--open-mode=append", f"--output={files.node_log}"]
    if options.cpus_per_task:
        # Slurm 22.05's srun does not take --cpus-per-task from the batch allocation.
        args.append(f"--cpus-per-task={options.cpus_per_task}")
    return [shlex.quote(a) for a in args]


def requeue_block(options: SlurmOptions) -> list[str]:
    """After srun: exit 75 means every rank saved; requeue, counted and capped. Other codes end the job."""
    cap = options.max_requeues
    if not options.requeue:
        return [f'if [ "$status" -eq {EXIT_REQUEUE} ]; then',
                '  echo "gangrun: training saved and asked for a requeue, but requeue is off for this job" >&2',
                "fi"]
    return [
        f'if [ "$status" -eq {EXIT_REQUEUE} ]; then',
        f'  if [ "$restarts" -lt {cap} ]; then',
        f'    echo "gangrun: training saved and asked for a requeue: requeue $((restarts + 1)) of {cap}"',
        f"    {REQUEUE_LINE}",
        '    echo "gangrun: scontrol requeue failed; the job ends here" >&2',
        "  else",
        f'    echo "gangrun: training asked for a requeue, but the job was requeued {cap} times already" >&2',
        "  fi",
        "fi",
    ]


def render_sbatch(spec: JobSpec, options: SlurmOptions, folder: Path, python: str, workdir: Path) -> str:
    """The whole batch script for ``spec``, writing its logs under ``folder`` (validated input).

    ``workdir`` is where sbatch runs the job (the submitting folder), bound into a container runtime's image.
    """
    files = JobFiles(folder)
    runtime = options.container_runtime
    # In an image its own interpreter, unless --python names another.
    python = options.python or IMAGE_PYTHON if runtime else python
    launcher_and_flags, program = agent_command(spec, python, options, files)
    launch = len(agent_launch(python))
    srun = srun_command(options, files)
    inside: list[str] = []
    if runtime is not None:
        mounts = bind_mounts([str(folder), str(workdir)], spec.mounts)
        srun += quoted(srun_flags(runtime, spec, mounts, workdir))
        inside = quoted(wrapper(runtime, spec, mounts, workdir, list(environment(spec, options))))
    command = [" ".join(srun), *([" ".join(inside)] if inside else []), " ".join(launcher_and_flags[:launch]),
               *launcher_and_flags[launch:],
               " ".join(program)]
    return "\n".join([
        "#!/bin/bash",
        SHELLCHECK_LITERALS,
        f"# gangrun {__version__}: {spec.job_name}, {spec.nnodes} node(s) x {spec.nproc_per_node} process(es)"
        + (f", in {spec.image} ({runtime})." if runtime else "."),
        *sbatch_directives(spec, options, files),
        "",
        "# Every rank meets on the allocation's first host (never a silent localhost).",
        HEAD_NODE_LINE,
        'if [ -z "$head_node" ]; then',
        '  echo "gangrun: no first host in SLURM_JOB_NODELIST=${SLURM_JOB_NODELIST:-}" >&2',
        "  exit 1",
        "fi",
        RDZV_PORT_LINE,
        RESTARTS_LINE,
        'echo "gangrun: job $SLURM_JOB_ID run $((restarts + 1)) on $SLURM_JOB_NODELIST,'
        ' rendezvous ${head_node}:${rdzv_port}"',
        "",
        *(f"export {key}={shlex.quote(value)}" for key, value in environment(spec, options).items()),
        *setup_lines(runtime),
        "",
        "# One task per node, each a torchrun agent: gangrun's, which exits with the first failed",
        f"# worker's code instead of 1. Slurm's {NOTICE} reaches every worker; the agent outlives it.",
        " \\\n  ".join(command),
        "status=$?",
        *requeue_block(options),
        'echo "gangrun: job $SLURM_JOB_ID run $((restarts + 1)) ended with exit $status"',
        'exit "$status"',
        "",
    ])
