"""What the checks ask other programs: Slurm's host list and every node's view (srun), nvidia-smi, kubectl."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Every call here is bounded: doctor answers within seconds or says which program did not.
PROGRAM_TIMEOUT_S = 20
# Run on every node by srun: its host, torch and gangrun versions, and the token files it can read.
_NODE_REPORT = """\
import json, socket, sys
import torch, launcher
seen = {}
for path in sys.argv[1:]:
    try:
        seen[path] = open(path).read()
    except OSError as err:
        seen[path] = "unreadable: " + (err.strerror or str(err))
print(json.dumps({"host": socket.gethostname(), "torch": torch.__version__, "gangrun": launcher.__version__,
                  "tokens": seen}))
"""


def _run(argv: list[str], timeout_s: float = PROGRAM_TIMEOUT_S) -> subprocess.CompletedProcess[str] | str:
    """The finished program, or one line saying why it did not answer."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return f"{argv[0]} is not on PATH"
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv[:3])}` did not answer within {timeout_s:.0f} s"


def first_host(nodelist: str) -> tuple[str | None, str | None]:
    """The allocation's first host, as the batch script finds it (`scontrol show hostnames`), or why not."""
    done = _run(["scontrol", "show", "hostnames", nodelist])
    if isinstance(done, str):
        return None, done
    hosts = done.stdout.split()
    return (hosts[0], None) if done.returncode == 0 and hosts else (None, done.stderr.strip() or "no hosts")


def nvidia_smi_gpus() -> int | None:
    """GPUs nvidia-smi lists, or None where it is absent or fails (no driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = _run(["nvidia-smi", "-L"])
    if isinstance(done, str) or done.returncode != 0:
        return None
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class NodeReport:
    """One node's answer to the srun probe."""

    host: str
    torch: str
    gangrun: str
    tokens: dict[str, str]


def every_node(python: str, token_files: list[Path], nodes: int) -> tuple[list[NodeReport], str | None]:
    """Run the report on each node of this allocation, one task per node, or say why it could not run.

    ``--overlap`` lets the step start beside one doctor may itself be running in (srun gangrun doctor).
    """
    argv = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--overlap", python, "-P", "-c", _NODE_REPORT,
            *map(str, token_files)]
    done = _run(argv, timeout_s=120)  # every node imports torch: seconds each, more on a cold shared disk
    if isinstance(done, str):
        return [], done
    if done.returncode != 0:
        return [], (done.stderr.strip().splitlines() or [f"srun exited {done.returncode}"])[-1]
    reports = []
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            reports.append(NodeReport(data["host"], data["torch"], data["gangrun"], data["tokens"]))
    return reports, None


def which(program: str) -> str | None:
    return shutil.which(program)


def kubectl_cluster_error(kubectl: str) -> str | None:
    """None when kubectl reaches a cluster's API server, else its one-line complaint."""
    done = _run([kubectl, "version", "--request-timeout=5s", "-o", "json"])
    if isinstance(done, str):
        return done
    if done.returncode == 0 and '"serverVersion"' in done.stdout:
        return None
    return (done.stderr.strip().splitlines() or ["no server version"])[-1]
