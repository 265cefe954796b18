"""Every thread's Python stack of a live worker: py-spy first, the program's faulthandler where ptrace is refused.

py-spy reads another process's stack without its help (it needs ptrace: root, or CAP_SYS_PTRACE in
a container); the training program also registers faulthandler on the contract's STACK_SIGNAL and
writes to ``rank$RANK.stacks`` beside its progress file. A process stopped by SIGSTOP cannot be
read by either, so it is let run for an instant (SIGCONT), read, and stopped again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from launcher.agent.procstat import process_state
from launcher.contract import STACK_SIGNAL

PY_SPY_TIMEOUT_S = 10.0
FAULTHANDLER_WAIT_S = 1.0
# Frames in these files are torch waiting on its peers: a collective, or DDP's gradient sync in backward.
_WAITING = ("torch/distributed/", "torch/autograd/", "torch/nn/parallel/", "torch/_tensor.py")


def is_library(file: str) -> bool:
    """torch's own frames and the standard library's (py-spy shortens installed paths to ``torch/...``)."""
    return (file.startswith(("torch/", "<")) or "/torch/" in file
            or ("/lib/python3" in file and "-packages/" not in file))
_PY_SPY_THREAD = re.compile(r'^Thread (?:0x)?[0-9a-fA-F]+ \((?:idle|active|[^)]*)\)(?:: "(?P<name>[^"]*)")?')
_PY_SPY_FRAME = re.compile(r"^\s+(?P<function>\S.*?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
_FH_THREAD = re.compile(r"^(?:Current thread|Thread) 0x[0-9a-f]+")
_FH_FRAME = re.compile(r'^\s+File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<function>\S+)')


@dataclass(frozen=True)
class Frame:
    function: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.function}() at {os.path.basename(self.file)}:{self.line}"


@dataclass(frozen=True)
class Stack:
    """One rank's stack dump: its text as the tool printed it, and the main thread's frames."""

    rank: int
    pid: int
    text: str
    source: str
    state: str
    main: list[Frame] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP, SIGTSTP) or a debugger: process state T or t."""
        return self.state in ("T", "t")

    @property
    def waiting(self) -> bool:
        """The main thread waits on its peers: torch.distributed, or DDP's backward, called from the
        program's innermost frame (a torch frame further out, like torchrun's @record, is not a wait)."""
        own = self.own_frame
        inner = self.main[:self.main.index(own)] if own is not None else self.main
        return any(any(mark in frame.file for mark in _WAITING) for frame in inner)

    @property
    def innermost(self) -> Frame | None:
        return self.main[0] if self.main else None

    @property
    def own_frame(self) -> Frame | None:
        """The innermost frame of the program itself, outside torch and the standard library."""
        return next((f for f in self.main if not is_library(f.file)), None)


def parse_threads(text: str) -> list[list[Frame]]:
    """Each thread's frames, innermost first, from py-spy's dump or faulthandler's."""
    threads: list[list[Frame]] = []
    for line in text.splitlines():
        if _PY_SPY_THREAD.match(line) or _FH_THREAD.match(line):
            threads.append([])
            continue
        match = _PY_SPY_FRAME.match(line) or _FH_FRAME.match(line)
        if match and threads:
            threads[-1].append(Frame(match["function"], match["file"], int(match["line"])))
    return threads


def main_thread(threads: list[list[Frame]]) -> list[Frame]:
    """The thread that runs the program's ``<module>`` (the main thread), else the first."""
    for frames in threads:
        if any(f.function == "<module>" for f in frames):
            return frames
    return threads[0] if threads else []


def py_spy() -> str | None:
    """py-spy beside this interpreter (installed with gangrun), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def _py_spy_dump(pid: int, tries: int = 1) -> str | None:
    tool = py_spy()
    if tool is None:
        return None
    for attempt in range(tries):
        # Reading a process just let run again sometimes fails ("Failed to find python version"); once
        # more, without pausing it, usually works.
        flags = ["--nonblocking"] if attempt else []
        try:
            done = subprocess.run([tool, "dump", *flags, "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=PY_SPY_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if done.returncode == 0 and "Thread" in done.stdout:
            return done.stdout
        time.sleep(0.1)
    return None


def faulthandler_dump(pid: int, file: Path) -> str | None:
    """Ask the program for its own dump; the newest one in its stacks file."""
    try:
        before = file.stat().st_size if file.is_file() else 0
        os.kill(pid, STACK_SIGNAL)
    except OSError:
        return None
    deadline = time.monotonic() + FAULTHANDLER_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if file.is_file() and file.stat().st_size > before:
            time.sleep(0.1)
            with file.open() as f:
                f.seek(before)
                return f.read()
    return None


def dump_stack(rank: int, pid: int, fallback: Path) -> Stack:
    """Every thread of ``pid``; the rank keeps the state it was in (a stopped rank is stopped again)."""
    state = process_state(pid)
    stopped = state in ("T", "t")
    if stopped:
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    try:
        text, source = _py_spy_dump(pid, tries=2 if stopped else 1), "py-spy"
        if text is None:
            text, source = faulthandler_dump(pid, fallback), "faulthandler"
    finally:
        if stopped:
            os.kill(pid, signal.SIGSTOP)
    if text is None:
        return Stack(rank, pid, "(no stack: py-spy could not attach and the program answered no "
                                f"{STACK_SIGNAL.name})\n", "none", state)
    return Stack(rank, pid, text, source, state, main_thread(parse_threads(text)))


def dump_stacks(pids: dict[int, int], progress_dir: str) -> dict[int, Stack]:
    """Every rank's stack at once (rank -> pid), so no rank's dump waits for another's."""
    with ThreadPoolExecutor(max(1, len(pids))) as pool:
        futures = {rank: pool.submit(dump_stack, rank, pid, Path(progress_dir) / f"rank{rank}.stacks")
                   for rank, pid in pids.items()}
        return {rank: future.result() for rank, future in sorted(futures.items())}
