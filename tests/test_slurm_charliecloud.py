"""A Slurm job inside the project image through Charliecloud, on the local two-node Slurm: it trains as on bare
metal, bit for bit, and a preemption notice inside the container saves, requeues and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checkpoint_runs import assert_models_equal, read_checkpoint
from tests.slurm_cluster import SlurmCluster
from tests.test_slurm import STEPS, digits, gangrun, run_to_end, submit, wait_for_line

pytestmark = [pytest.mark.slurm, pytest.mark.podman, pytest.mark.multiprocess]
TWO_NODES = ["--nnodes", "2", "--nproc-per-node", "1"]


def test_a_preempted_two_node_job_in_charliecloud_resumes_to_the_bare_metal_weights(
        cluster: SlurmCluster, charliecloud_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # Under /tmp, which ch-run binds from the host, so the job's folders exist inside the image too.
    work = tmp_path_factory.mktemp("charliecloud-work")
    bare_dir, inside_dir = work / "bare", work / "inside"
    run_to_end(cluster, work, *TWO_NODES, "--name", "bare", *digits(bare_dir))
    job = submit(cluster, work, *TWO_NODES, "--name", "inside", "--container-runtime", "charliecloud",
                 "--image", str(charliecloud_dir), *digits(inside_dir))
    logs = wait_for_line(cluster, work, job, r"\[rank0\]: step\s+\d+ ")
    # The agent and the program are the image's own: its interpreter, not this virtualenv's.
    assert "ch-run --set-env" in (work / "home" / "slurm" / "inside" / f"{job}.sbatch").read_text()
    assert "world: 2 ranks on 2 nodes" in logs, logs[-3000:]
    cluster.run("scancel", "--signal=USR2", job)
    cluster.wait_until_requeued(job)
    # A requeued job waits ~120 s (Reason=BeginTime); the test does not.
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    followed = gangrun(cluster, work, "logs", "--follow", job)
    assert followed.returncode == 0, followed.stderr
    assert "stopping at step" in followed.stdout and "checkpoint: resumed from" in followed.stdout, \
        followed.stdout[-4000:]
    assert gangrun(cluster, work, "status", job).stdout.startswith("COMPLETED")
    final = f"checkpoints/step-{STEPS:08d}"
    assert_models_equal(read_checkpoint(bare_dir / final, work / "scratch"),
                        read_checkpoint(inside_dir / final, work / "scratch"))
