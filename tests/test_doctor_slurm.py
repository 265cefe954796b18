"""`gangrun doctor` and the agent's preflight inside real allocations of the two-node Slurm on localhost."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN
from tests.slurm_cluster import SlurmCluster

# Every test here uses the session's `cluster` fixture (tests/conftest.py); the agent imports torchrun.
pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def work(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the commands run from; every node sees it (both are this machine)."""
    return tmp_path_factory.mktemp("doctor-work")


def in_allocation(cluster: SlurmCluster, work: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` (srun or salloc first) as a user on the login node runs it; a generous bound, never a measure."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("GANGRUN_", "SLURM_JOB", "TORCHELASTIC"))}
    env.update(GANGRUN_HOME=str(work / "home"), PATH=f"{BIN}{os.pathsep}{env['PATH']}", MPLCONFIGDIR=str(work / "mpl"))
    return subprocess.run(list(argv), env=env, cwd=work, capture_output=True, text=True, timeout=180)


def test_doctor_in_a_one_node_allocation_names_the_node_count(cluster: SlurmCluster, work: Path) -> None:
    result = in_allocation(cluster, work, "srun", "-N1", str(BIN / "gangrun"), "doctor", "--target", "slurm",
                           "--nnodes", "2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "fail nnodes: --nnodes 2 but the allocation has 1 node(s) (SLURM_NNODES); use --nnodes 1" in result.stdout
    assert re.search(r"^ok   rdzv_port: port \d+ is free on node[12]", result.stdout, re.MULTILINE), result.stdout


def test_agent_in_a_one_node_allocation_stops_instead_of_waiting_in_rendezvous(cluster: SlurmCluster,
                                                                                work: Path) -> None:
    result = in_allocation(cluster, work, "srun", "-N1", str(BIN / "python"), "-P", "-m", "launcher.agent",
                           "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:23456",
                           "-m", "train", "--config", "digits", f"output_dir={work / 'never'}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert ("gangrun: preflight: fail: nnodes: --nnodes 2 but the allocation has 1 node(s) (SLURM_NNODES)"
            in result.stderr), result.stderr
    assert not (work / "never").exists()


def test_doctor_across_two_nodes_sees_one_folder_and_one_version(cluster: SlurmCluster, work: Path) -> None:
    folder = work / "checkpoints"
    result = in_allocation(cluster, work, "salloc", "-N2", str(BIN / "gangrun"), "doctor", "--target", "slurm",
                           "--nnodes", "2", "--checkpoint", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok   checkpoint: {folder}: the same on 2 node(s) (the same folder)" in result.stdout, result.stdout
    assert re.search(r"^ok   versions: torch and gangrun: the same on 2 node\(s\) \(torch \S+, gangrun \S+\)$",
                     result.stdout, re.MULTILINE), result.stdout
    assert "ok   nnodes: --nnodes 2 fits the allocation's 2 node(s)" in result.stdout
    # The token each node read is gone again.
    assert not list(work.glob(".gangrun-doctor-*"))
