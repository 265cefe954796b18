"""A Slurm job's state: the controller's live view first, accounting only once the controller forgot it."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

# States after which the job will not run again without a person (SPECIAL_EXIT is a requeue hold).
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                      "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"})
_FIELD = r"(?:^|\s){}=(\S+)"


@dataclass(frozen=True)
class JobState:
    state: str
    nodes: str = ""

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def describe(self) -> str:
        """``RUNNING on node[1-2]``; a pending job has no nodes worth naming."""
        if self.state != "PENDING" and self.nodes and self.nodes != "(null)" and self.nodes != "None assigned":
            return f"{self.state} on {self.nodes}"
        return self.state


def parse_scontrol(text: str) -> JobState | None:
    """The first record of ``scontrol show job -o ID``; None when it names no job."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    state = re.search(_FIELD.format("JobState"), first)
    if state is None:
        return None
    nodes = re.search(_FIELD.format("NodeList"), first)
    return JobState(state.group(1), nodes.group(1) if nodes else "")


def controller_state(job_id: str) -> JobState | None:
    """What slurmctld says now; None once the job has aged out of it (MinJobAge, 300 s by default)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False)
    return parse_scontrol(proc.stdout) if proc.returncode == 0 else None


def job_state(job_id: str, accounting: Callable[[], JobState]) -> JobState:
    """The controller's state; ``accounting`` (sacct) only for jobs it no longer holds.

    sacct hears of state changes from slurmdbd some time after the controller makes them, so a job
    whose ranks already print can still read PENDING there (seen in CI).
    """
    return controller_state(job_id) or accounting()
