"""A failed job's verdict: the first failing rank, its host, its own code or signal, a class, its traceback's tail.

Pure: the agent (launcher.agent.verdict), `gangrun run`, and every engine's `status` and `logs` build
one from the evidence each has (a worker's exit code and stderr, the kernel's OOM killer, Slurm's step
rows, a pod's reason) and print the same line with ``render``. Each node's agent writes its own to the
status folder (``verdict-node<N>.json``); ``first_failure`` picks the job's among them.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from launcher.contract import EXIT_BAD_INPUT, EXIT_HANG, EXIT_REQUEUE, SIGNAL_EXIT_BASE, STOP_SIGNALS

# The classes, by the key written to verdict files, and how the line names them.
CLASSES = {
    "bad-input": "bad input",
    "exception": "exception in user code",
    "oom": "out of memory",
    "comm": "communication error",
    "hang": "hang",
    "preempted": "preemption",
    "timeout": "time limit",
    "signal": "killed by a signal",
    "exit": "nonzero exit",
}
# A rank of these classes failed because another did (a peer's death, a node stopped because another
# failed): the job's verdict names a cause first, a consequence only when nothing else failed.
CONSEQUENCES = {"comm": 1, "preempted": 2}
STOPPED_BY = frozenset(s.name for s in STOP_SIGNALS)
TAIL_LINES = 5
VERDICT_FILE = "verdict-node{node}.json"

_TRACEBACK = "Traceback (most recent call last):"
_PREFIX = re.compile(r"^(?:\[rank\d+\]: ?)+")
# Matched on the exception's own line (the traceback's last), never on file paths above it:
# every collective's frames run through torch/distributed/c10d_logger.py.
_OOM = re.compile(r"\bMemoryError\b|OutOfMemoryError|out of memory", re.IGNORECASE)
_COMM = re.compile(r"DistBackendError|DistNetworkError|DistStoreError|\bgloo\b|\bNCCL\b|\bnccl\w*|c10d|"
                   r"Connection (?:closed|reset) by peer|Broken pipe|ProcessGroup\w*|collective operation timeout",
                   re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    """Why a job (or one node of it) failed, as every command prints it."""

    klass: str
    rank: int | None
    host: str
    code: int
    signal: str | None = None
    tail: tuple[str, ...] = ()
    logs: str = ""
    # Evidence in words: "the kernel's OOM killer", "Slurm state PREEMPTED", a hang's own verdict.
    detail: str = ""
    # When it failed (seconds since the epoch): across nodes, the earliest cause is the job's.
    at: float = 0.0
    # Other ranks that failed with it, and their classes: (rank, klass).
    others: tuple[tuple[int, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Verdict:
        value = {**value, "tail": tuple(value.get("tail", ())),
                 "others": tuple((int(r), str(k)) for r, k in value.get("others", ()))}
        return cls(**value)

    def with_logs(self, logs: str) -> Verdict:
        return replace(self, logs=logs)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def from_returncode(returncode: int) -> tuple[int, str | None]:
    """(exit status, signal name or None) from a Python return code (-N: killed by signal N)."""
    if returncode < 0:
        return SIGNAL_EXIT_BASE - returncode, signal_name(-returncode)
    return returncode, None


def traceback_tail(text: str, lines: int = TAIL_LINES) -> tuple[str, ...]:
    """The last ``lines`` lines of the last Python traceback in ``text`` (rank prefixes removed); () when none."""
    plain = [_PREFIX.sub("", line).rstrip() for line in text.splitlines()]
    starts = [i for i, line in enumerate(plain) if line.strip() == _TRACEBACK]
    if not starts:
        return ()
    block = [line for line in plain[starts[-1]:] if line.strip()]
    # A traceback ends at its exception line: the first unindented line after the header.
    end = next((i for i, line in enumerate(block[1:], 1) if not line.startswith(" ")), len(block) - 1)
    return tuple(block[:end + 1][-lines:])


def classify(rank: int | None, host: str, code: int, signal: str | None = None, trace: str = "",
             oom_killer: str = "", at: float = 0.0, detail: str = "") -> Verdict:
    """The verdict for one failed worker, from its exit status, signal, stderr or traceback, and OOM evidence.

    ``oom_killer`` says how the kernel's OOM killer was seen to kill it (empty: not seen).
    """
    tail = traceback_tail(trace)
    error = tail[-1] if tail else ""
    if not tail and signal is None:
        # No traceback: the program's own last word (a one-line input error, a message before exit(N)).
        tail = tuple(line for line in (_PREFIX.sub("", raw).rstrip() for raw in trace.splitlines()) if line)[-1:]
    if code == EXIT_HANG:
        klass = "hang"
    elif code == EXIT_REQUEUE:
        klass = "preempted"
    elif code == EXIT_BAD_INPUT and signal is None:
        klass = "bad-input"
    elif oom_killer or _OOM.search(error):
        klass, detail = "oom", oom_killer or detail
    elif _COMM.search(error):
        klass = "comm"
    elif signal is not None:
        klass = "signal"
    elif error:
        klass = "exception"
    else:
        klass = "exit"
    return Verdict(klass, rank, host, code, signal, tail, detail=detail, at=at)


def _tier(v: Verdict) -> int:
    # torchrun stops a failed worker's peers with SIGTERM and lists them among the failures too.
    stopped = v.klass == "signal" and v.signal in STOPPED_BY
    return CONSEQUENCES.get(v.klass, 1 if stopped else 0)


def first_failure(verdicts: Iterable[Verdict]) -> Verdict | None:
    """The job's verdict among its nodes' (or ranks'): the earliest cause, a consequence only when all are.

    A rank whose peer died fails too, often first by the clock (a gloo error returns at once, a
    SIGKILLed process is only noticed at the next poll): it is never named over the peer.
    """
    ordered = sorted(verdicts, key=lambda v: (_tier(v), v.at, v.rank if v.rank is not None else -1))
    if not ordered:
        return None
    first = ordered[0]
    others = {r: k for v in ordered for r, k in ((v.rank, v.klass), *v.others) if r is not None and r != first.rank}
    return replace(first, others=tuple(sorted({**dict(first.others), **others}.items())))


def _how(v: Verdict) -> str:
    how = f"killed by {v.signal}" if v.signal else f"exited {v.code}"
    return f"{how} ({v.detail})" if v.detail else how


def render_line(v: Verdict) -> str:
    """The one last line: ``gangrun: failed: out of memory: rank 1 on node2 killed by SIGKILL (...); logs: ...``."""
    where = f"rank {v.rank} on {v.host}" if v.rank is not None else v.host or "a rank"
    if v.klass == "hang":
        # launcher.agent.hang's own verdict names the culprit, the waiting ranks and the stacks.
        body = f"{v.detail}; exit {v.code}" if v.detail else f"{where} made no progress; exit {v.code}"
    else:
        body = f"{where} {_how(v)}"
        if v.tail:
            body += f": {v.tail[-1].strip()}"
    after = [f"rank {r} ({CLASSES.get(k, k)})" for r, k in v.others]
    if after:
        body += f"; failed after it: {', '.join(after)}"
    logs = f"; logs: {v.logs}" if v.logs else ""
    # A preempted run did not fail: it saved and asks to be started again (exit 75).
    verb = "stopped" if v.klass == "preempted" else "failed"
    return f"gangrun: {verb}: {CLASSES.get(v.klass, v.klass)}: {body}{logs}"


def render(v: Verdict, tail: bool = True) -> str:
    """The traceback's last lines (``[rankN]: ...``), then the verdict line.

    A one-line tail (a program's own error line, no traceback) is not repeated: the verdict line quotes it.
    """
    prefix = f"[rank{v.rank}]: " if v.rank is not None else ""
    lines = [f"{prefix}{line}" for line in v.tail] if tail and v.klass != "hang" and len(v.tail) > 1 else []
    return "\n".join([*lines, render_line(v)])


def write_verdict(folder: str | Path, node: int, verdict: Verdict) -> Path:
    """This node's verdict in the status folder, atomically (a reader never sees half a file)."""
    path = Path(folder) / VERDICT_FILE.format(node=node)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(verdict.to_json()))
    os.replace(tmp, path)
    return path


def read_verdicts(folder: str | Path) -> list[Verdict]:
    """Every node's verdict in the status folder (none when the run succeeded or nothing was written)."""
    verdicts = []
    for path in sorted(Path(folder).glob(VERDICT_FILE.format(node="*"))):
        try:
            verdicts.append(Verdict.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return verdicts
