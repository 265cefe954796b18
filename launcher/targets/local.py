"""The local target: one torchrun agent per node on this machine, supervised until the first failure."""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from launcher.errors import SpecError
from launcher.spec import JobSpec
from launcher.torchrun import Rendezvous, torchrun_args

LOOPBACK = "127.0.0.1"
# How long agents get to stop their workers after SIGTERM before they are killed.
STOP_GRACE_S = 30.0


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
) -> list[AgentCommand]:
    """The agents ``gangrun run`` starts: pure, so dry runs and golden tests see exactly this.

    One node with a fixed count uses static rendezvous (about 2.5 s faster to start than c10d);
    several nodes, an elastic range or a given endpoint use c10d, as a cluster would.
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
        argv = [python, "-m", "launcher.agent", *torchrun_args(spec, rdzv)]
        commands.append(AgentCommand(node, argv, env))
    return commands


def check_entrypoint(spec: JobSpec) -> None:
    """Fail before starting anything when the script or module cannot be found here."""
    entry = spec.entrypoint
    if entry.is_module:
        try:
            found = importlib.util.find_spec(entry.target) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise SpecError("entrypoint", f"module '{entry.target}' is not importable",
                            "install it or check the name after -m")
    elif not Path(entry.target).is_file():
        raise SpecError("entrypoint", f"script '{entry.target}' does not exist", "check the path")


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies, so no agent outlives it unseen."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def run_local(spec: JobSpec) -> int:
    """Start every node's agent, forward SIGINT/SIGTERM, stop the rest at the first failure.

    Returns the exit status of the first agent that failed (its first worker's code), else 0.
    """
    check_entrypoint(spec)
    commands = render_local(spec, free_port(), f"{spec.job_name}-{uuid.uuid4().hex[:8]}")
    procs = [
        subprocess.Popen(cmd.argv, env={**os.environ, **cmd.env}, start_new_session=True,
                         preexec_fn=_die_with_parent)
        for cmd in commands
    ]
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _supervise(procs, received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(procs: list[subprocess.Popen], received: list[int]) -> int:
    first_failure: int | None = None
    deadline: float | None = None
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [code for code in codes if code]
        if failed and first_failure is None:
            first_failure = 128 - failed[0] if failed[0] < 0 else failed[0]
            running = [proc for proc, code in zip(procs, codes) if code is None]
            if running:
                print(f"gangrun: a node's agent exited {first_failure}; stopping the other nodes",
                      file=sys.stderr, flush=True)
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
        if all(code is not None for code in codes):
            break
        if received and deadline is None:
            deadline = time.monotonic() + STOP_GRACE_S
        if deadline is not None and time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.05)
    if first_failure is not None:
        return first_failure
    if received:
        return 128 + received[0]
    return 0
