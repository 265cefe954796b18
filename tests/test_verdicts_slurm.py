"""The verdict on a real Slurm (tests/slurm_cluster.py): a preempted job is classed as a preemption in
`gangrun status` and `gangrun logs`, with the failed step's own exit code from sacct's step rows."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from launcher.engines.slurm.accounting import SACCT_FORMAT, parse_sacct
from tests.slurm_cluster import SlurmCluster
from tests.test_slurm import digits, gangrun, submit, wait_for_line

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def work(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("verdict-work")


def test_a_preempted_job_is_classed_as_preemption_with_its_steps_code(cluster: SlurmCluster, work: Path) -> None:
    # One short job: requeue off, so the preemption notice ends it (exit 75) instead of starting it again.
    job = submit(cluster, work, "--nnodes", "1", "--nproc-per-node", "1", "--name", "preempted", "--no-requeue",
                 *digits(work / "out"), "train.max_steps=100000")
    wait_for_line(cluster, work, job, r"\[rank0\]: step\s+\d+ ")
    # What Slurm sends --signal-grace seconds before a preemption or the time limit (tests/test_slurm.py).
    cluster.run("scancel", "--signal=USR2", job)
    deadline = time.monotonic() + 120
    while not (status := gangrun(cluster, work, "status", job).stdout).startswith("FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    # slurmdbd records the step's end a moment after the controller ends the job.
    while not (step := next((r for r in parse_sacct(cluster.run("sacct", "-j", job, f"--format={SACCT_FORMAT}", "-P",
                                                                "-n").stdout)
                             if r.job_id == f"{job}.0" and r.state != "RUNNING"), None)):
        assert time.monotonic() < deadline, "sacct never recorded the step's end"
        time.sleep(0.5)
    assert step.code == 75, step
    status = gangrun(cluster, work, "status", job).stdout
    line = status.strip().splitlines()[-1]
    assert re.match(r"gangrun: stopped: preemption: the ranks on \S+ exited 75 \(the ranks stopped on a stop signal "
                    rf"and saved\); logs: \S+/{job}\.", line), status
    assert gangrun(cluster, work, "logs", job).stdout.strip().splitlines()[-1] == line
