"""Whether the kernel's OOM killer killed a worker: its memory cgroup's oom_kill count, or the kernel log.

A worker inherits its agent's memory cgroup (Slurm's step cgroup, a pod's container), so the agent
counts that cgroup's OOM kills at start and again when a worker died of SIGKILL: a rise means the
kernel killed one. The kernel log (``/dev/kmsg``, readable by root or where dmesg_restrict is 0) names
the very pid. Where neither can be read, a verdict says "killed by SIGKILL" and no more.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# "Memory cgroup out of memory: Killed process 1234 (python)" and "oom-kill:...,pid=1234,uid=0".
_KILLED = re.compile(r"Killed process (\d+)|oom-kill:.*?\bpid=(\d+)")
KMSG_MAX_RECORDS = 100_000


def memory_cgroup(proc_cgroup: str, root: Path = CGROUP_ROOT) -> Path | None:
    """This process's memory cgroup folder, from /proc/self/cgroup's text: v1's memory line, else v2's."""
    unified = None
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return root / "memory" / path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            unified = path.lstrip("/")
    if unified is None:
        return None
    # v2 mounted at the root, or as "unified" beside v1 controllers (hybrid).
    for base in (root, root / "unified"):
        if (base / unified / "memory.events").is_file():
            return base / unified
    return None


def oom_kill_count(cgroup: Path) -> int | None:
    """The cgroup's OOM kill counter: v1's ``memory.oom_control`` or v2's ``memory.events`` (``oom_kill N``)."""
    for name in ("memory.oom_control", "memory.events"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        match = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def killed_pids(kmsg_text: str) -> set[int]:
    """The pids the OOM killer names in kernel log text."""
    return {int(a or b) for a, b in _KILLED.findall(kmsg_text)}


def read_kmsg(path: str = "/dev/kmsg") -> str:
    """The kernel log buffer as text (one record per read), or "" where it cannot be read."""
    records: list[str] = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        for _ in range(KMSG_MAX_RECORDS):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:
                # EPIPE: records were overwritten while reading; the next read goes on from the oldest left.
                continue
            if not record:
                break
            records.append(record.decode(errors="replace"))
    finally:
        os.close(fd)
    return "".join(records)


@dataclass
class OomWatch:
    """The agent's memory cgroup's OOM kills at start, to compare with when a worker dies of SIGKILL."""

    cgroup: Path | None
    kills_at_start: int | None

    @classmethod
    def start(cls) -> OomWatch:
        try:
            cgroup = memory_cgroup(Path("/proc/self/cgroup").read_text())
        except OSError:
            cgroup = None
        return cls(cgroup, oom_kill_count(cgroup) if cgroup is not None else None)

    def evidence(self, pid: int | None) -> str:
        """How the OOM killer was seen to kill ``pid`` ("" when it was not)."""
        if pid is not None:
            with contextlib.suppress(OSError):
                if pid in killed_pids(read_kmsg()):
                    return "the kernel's OOM killer, in the kernel log"
        if self.cgroup is not None and self.kills_at_start is not None:
            now = oom_kill_count(self.cgroup)
            if now is not None and now > self.kills_at_start:
                return f"the kernel's OOM killer: {now - self.kills_at_start} OOM kill(s) in cgroup {self.cgroup}"
        return ""
