"""`gangrun run`: start every node's agent on this machine, supervise them until the first failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from launcher.contract import (
    EXIT_OK,
    EXIT_REQUEUE,
    NOTICE_SIGNAL,
    exit_status,
    ignore_stop_signals,
)
from launcher.engines.local.jobs import CONSOLE, job_verdict, new_handle, record_exit
from launcher.engines.local.options import LocalOptions
from launcher.engines.local.render import LOOPBACK, container_run, render_local
from launcher.spec import JobSpec
from launcher.verdict import Verdict, render


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies, so no agent outlives it unseen."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def _copy(stream: IO[bytes], out: IO[bytes], log: IO[bytes]) -> None:
    """One agent stream to the console and to the run's console.log, line by line."""
    for line in iter(stream.readline, b""):
        out.write(line)
        out.flush()
        log.write(line)
        log.flush()


def run_local(spec: JobSpec, options: LocalOptions) -> int:
    """Start every node's agent, forward stop signals, stop the rest at the first failure.

    Returns the exit status of the failure the agents' verdicts name as the cause (that worker's own
    code), else that of the first agent that failed, else 0. The
    run has a handle (``local-<run id>``) for `gangrun status|logs|stacks|cancel` while it runs.
    """
    noted = note_stop_signals()
    run_id = f"{spec.job_name}-{uuid.uuid4().hex[:8]}"
    handle = new_handle(run_id, spec.job_name, spec.nnodes.max)
    print(f"gangrun: run {handle.id} (gangrun status|logs|stacks {handle.id}); folder {handle.folder}",
          file=sys.stderr, flush=True)
    commands = render_local(spec, free_port(), run_id, stop_grace_s=options.stop_grace_s, folder=handle.folder,
                            container=container_run(spec))
    code = EXIT_OK
    verdict: Verdict | None = None
    with (Path(handle.folder) / CONSOLE).open("ab") as log, Forwarder(noted) as forwarder:
        for cmd in commands:
            if forwarder.received:
                break
            forwarder.procs.append(subprocess.Popen(
                cmd.argv, env={**os.environ, **cmd.env}, start_new_session=True, preexec_fn=_die_with_parent,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        copies = [threading.Thread(target=_copy, args=(stream, out, log), daemon=True)
                  for proc in forwarder.procs
                  for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer))
                  if stream is not None]
        for thread in copies:
            thread.start()
        try:
            if forwarder.received and len(forwarder.procs) < len(commands):
                code = forwarder.stop_before_start()
            else:
                # The agents get the grace to stop their workers, and a little more to report.
                code = _supervise(forwarder.procs, forwarder.received, options.stop_grace_s + AGENT_REPORT_S)
        finally:
            for thread in copies:
                thread.join(timeout=5)
            verdict = job_verdict(handle) if code else None
            # The verdict names the cause across nodes, and its own code is the run's: the agent that
            # exits first is often a survivor's, failed because its peer died.
            if verdict is not None:
                code = verdict.code
            record_exit(handle, code)
    if verdict is not None:
        print(render(verdict), file=sys.stderr, flush=True)
    ignore_stop_signals()
    return code


def note_stop_signals() -> list[int]:
    """From here to the exit, a stop signal only lands in the list returned: before the agents start it
    stops the run (Forwarder), after they ended the run's own exit code stands (never 128 + N)."""
    noted: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM, NOTICE_SIGNAL):
        signal.signal(signum, lambda received, _frame: noted.append(received))
    return noted


class Forwarder:
    """The stop signals `gangrun run` passes on to the agents it started, from before the first starts."""

    def __init__(self, noted: list[int]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        # A signal noted before the agents start stops the run before it begins.
        self.received: list[int] = list(noted)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Forwarder:
        self._previous = {s: signal.signal(s, self._forward) for s in (signal.SIGINT, signal.SIGTERM)}
        self._previous[NOTICE_SIGNAL] = signal.signal(NOTICE_SIGNAL, self._notice)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _forward(self, signum: int, _frame: object) -> None:
        self.received.append(signum)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _notice(self, signum: int, _frame: object) -> None:
        # As Slurm sends it: to every process of every node, the agents and their workers, which
        # share the agent's process group. They save at the next step and exit 75 on their own.
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signum)

    def stop_before_start(self) -> int:
        """Stopped before every node started: stop those that did; nothing trained, ask for a requeue."""
        _supervise(self.procs, self.received, AGENT_REPORT_S)
        print(f"gangrun: stopped by {signal.Signals(self.received[0]).name} before every node started; "
              f"exiting {EXIT_REQUEUE}", file=sys.stderr, flush=True)
        return EXIT_REQUEUE


# After the stop grace the agents kill what is left of their workers; this long more to say so and exit.
AGENT_REPORT_S = 10


def _supervise(procs: list[subprocess.Popen[bytes]], received: list[int], grace_s: float) -> int:
    """Wait for every agent; the first failed one's status, else 0."""
    first_failure: int | None = None
    deadline: float | None = None
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [code for code in codes if code]
        if failed and first_failure is None:
            first_failure = exit_status(failed[0])
            running = [proc for proc, code in zip(procs, codes, strict=True) if code is None]
            if running:
                print(f"gangrun: a node's agent exited {first_failure}; stopping the other nodes",
                      file=sys.stderr, flush=True)
            for proc in running:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
        if all(code is not None for code in codes):
            break
        if received and deadline is None:
            deadline = time.monotonic() + grace_s
        if deadline is not None and time.monotonic() > deadline:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        time.sleep(0.05)
    # An agent's own code says what a stop meant: 75 saved, 0 already finished.
    return first_failure if first_failure is not None else EXIT_OK
