"""gangrun's Slurm target against a real two-node Slurm on localhost: submit, logs, status, cancel,
preemption with requeue and exact resume, and the plain script in slurm/ under `sbatch --wait`."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.checkpoint_runs import assert_models_equal, read_checkpoint
from tests.conftest import BIN, REPO, plant_decoys
from tests.slurm_cluster import SlurmCluster

# Every test here uses the session's `cluster` fixture (tests/conftest.py) and runs torchrun on it.
pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess]
STEPS = 200
# The preemption test compares bits on world 4, where the order of a gradient sum can show
# (train.parallel.allreduce_per_parameter keeps it fixed).
TWO_BY_TWO = ["--nnodes", "2", "--nproc-per-node", "2"]


def digits(output_dir: Path, micro_batch: int = 32) -> list[str]:
    return ["-m", "train", "--config", "digits", f"output_dir={output_dir}", f"train.max_steps={STEPS}",
            f"train.micro_batch_size={micro_batch}", "checkpoint.every=1000", "metrics.plot=false"]


@pytest.fixture(scope="module")
def work(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where jobs are submitted from (sbatch's working directory): a user's folder, decoys and all."""
    folder = tmp_path_factory.mktemp("work")
    plant_decoys(folder)
    return folder


def gangrun(cluster: SlurmCluster, work: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in cluster.env.items() if not k.startswith(("GANGRUN_", "SLURM_JOB", "TORCHELASTIC"))}
    env.update(GANGRUN_HOME=str(work / "home"), PATH=f"{BIN}{os.pathsep}{env['PATH']}", MPLCONFIGDIR=str(work / "mpl"))
    return subprocess.run([str(BIN / "gangrun"), *args], env=env, cwd=work, capture_output=True, text=True,
                          timeout=timeout)


def submit(cluster: SlurmCluster, work: Path, *args: str) -> str:
    result = gangrun(cluster, work, "submit", "--target", "slurm", *args)
    assert result.returncode == 0, result.stderr
    submitted = re.search(r"submitted slurm-(\d+)", result.stdout)
    assert submitted, result.stdout
    return submitted.group(1)


def wait_for_line(cluster: SlurmCluster, work: Path, job: str, pattern: str, count: int = 1) -> str:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        text = gangrun(cluster, work, "logs", job).stdout
        if len(re.findall(pattern, text, re.MULTILINE)) >= count:
            return text
        time.sleep(0.2)
    raise TimeoutError(f"job {job}: no {pattern!r} in its logs:\n{text[-3000:]}")


def run_to_end(cluster: SlurmCluster, work: Path, *args: str) -> tuple[str, str]:
    """Submit and follow the logs until the job ends: (job id, `gangrun logs --follow` output)."""
    job = submit(cluster, work, *args)
    followed = gangrun(cluster, work, "logs", "--follow", job)
    assert followed.returncode == 0, followed.stderr
    return job, followed.stdout


def test_two_node_job_completes_with_world_4(cluster: SlurmCluster, work: Path) -> None:
    # Two processes per node: a micro-batch that divides digits' global batch of 64 on 4 ranks.
    args = ["--nnodes", "2", "--nproc-per-node", "2", "--name", "digits", *digits(work / "world4", micro_batch=16)]
    job, logs = run_to_end(cluster, work, *args)
    # What `render` prints offline is exactly what was submitted, and the job's folder keeps it.
    submitted = (work / "home" / "slurm" / "digits" / f"{job}.sbatch").read_text()
    assert gangrun(cluster, work, "render", "--target", "slurm", *args).stdout == submitted + "\n"
    assert "training: world 4" in logs, logs[-3000:]
    assert re.search(r"^\[node\d\] \[rank0\]: eval .* accuracy 0\.\d+", logs, re.MULTILINE), logs[-3000:]
    assert gangrun(cluster, work, "status", job).stdout.startswith("COMPLETED")
    assert f"slurm-{job}\tdigits" in gangrun(cluster, work, "list").stdout
    assert set(re.findall(r"^\[(node\d)\]", logs, re.MULTILINE)) == {"node1", "node2"}
    only_rank0 = gangrun(cluster, work, "logs", "--rank", "0", job).stdout.splitlines()
    assert only_rank0 and all(re.match(r"\[node\d\] \[rank0\]: ", line) for line in only_rank0)


def test_logs_name_node_and_rank_and_cancel_stops_the_job(cluster: SlurmCluster, work: Path) -> None:
    job = submit(cluster, work, "--nnodes", "2", "--nproc-per-node", "1", "--name", "sleeper",
                 str(REPO / "tests" / "scripts" / "notice_exit.py"), "300")
    logs = wait_for_line(cluster, work, job, r"\[rank\d\]: worker .* ready$", count=2)
    # One rank per node: each node's file carries its own rank's lines.
    ranks = dict(re.findall(r"^\[(node\d)\] \[rank(\d)\]: worker .* ready$", logs, re.MULTILINE))
    assert sorted(ranks) == ["node1", "node2"] and sorted(ranks.values()) == ["0", "1"], logs
    assert gangrun(cluster, work, "status", job).stdout.startswith("RUNNING")
    assert gangrun(cluster, work, "cancel", job).returncode == 0
    deadline = time.monotonic() + 60
    while not gangrun(cluster, work, "status", job).stdout.startswith("CANCELLED"):
        assert time.monotonic() < deadline, gangrun(cluster, work, "status", job).stdout
        time.sleep(0.5)


def test_preempted_job_saves_requeues_resumes_and_matches_uninterrupted(cluster: SlurmCluster, work: Path) -> None:
    reference_dir = work / "uninterrupted"
    run_to_end(cluster, work, *TWO_BY_TWO, "--name", "uninterrupted", *digits(reference_dir, micro_batch=16))
    output_dir = work / "preempted"
    job = submit(cluster, work, *TWO_BY_TWO, "--name", "preempted", *digits(output_dir, micro_batch=16))
    wait_for_line(cluster, work, job, r"\[rank0\]: step\s+\d+ ")
    # What Slurm does --signal-grace seconds before the time limit, or on a preemption notice.
    cluster.run("scancel", "--signal=USR2", job)
    cluster.wait_until_requeued(job)
    assert cluster.job_field(job, "Restarts") == "1"
    # A requeued job waits ~120 s (Reason=BeginTime); the test does not.
    cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    followed = gangrun(cluster, work, "logs", "--follow", job)
    assert followed.returncode == 0, followed.stderr
    logs = followed.stdout
    assert "stopping at step" in logs and "requeue 1 of 3" in logs, logs[-4000:]
    assert "checkpoint: resumed from" in logs and f"job {job} run 2 " in logs, logs[-4000:]
    assert gangrun(cluster, work, "status", job).stdout.startswith("COMPLETED")
    final = f"checkpoints/step-{STEPS:08d}"
    assert_models_equal(read_checkpoint(reference_dir / final, work / "scratch"),
                        read_checkpoint(output_dir / final, work / "scratch"))


def test_plain_sbatch_script_runs_the_same_job(cluster: SlurmCluster, work: Path) -> None:
    output_dir = work / "plain"
    log = work / "plain.out"
    result = cluster.run(
        "sbatch", "--wait", f"--chdir={work}", f"--output={log}",
        f"--export=ALL,PYTHON={BIN / 'python'},NPROC_PER_NODE=2,MPLCONFIGDIR={work / 'mpl'}",
        str(REPO / "slurm" / "train.sbatch"), *digits(output_dir, micro_batch=16), "train.max_steps=20", check=False)
    text = log.read_text()
    assert result.returncode == 0, result.stderr + text[-3000:]
    assert "training: world 4" in text and "accuracy" in text, text[-3000:]


def test_sbatch_refusal_is_one_line_exit_2(cluster: SlurmCluster, work: Path) -> None:
    result = gangrun(cluster, work, "submit", "--target", "slurm", "--partition", "nosuch", "-m", "train")
    assert result.returncode == 2
    assert result.stderr.startswith("gangrun: error: slurm: sbatch refused the job") and result.stderr.count("\n") == 1


def test_a_running_job_shows_its_ranks_and_stacks_and_a_hang_ends_it_with_a_verdict(cluster: SlurmCluster,
                                                                                    work: Path) -> None:
    out = work / "hung"
    job = submit(cluster, work, "--nnodes", "2", "--nproc-per-node", "1", "--name", "hung", "--hang-timeout", "8",
                 "--env", "GANGRUN_TEST_STALL=1:120", *digits(out))
    wait_for_line(cluster, work, job, r"\[rank0\]: step\s+\d+ ")
    # While it runs (training, or rank 1 already stalled): every rank's progress, from both nodes' agents.
    deadline = time.monotonic() + 30
    while not re.search(r"^ +1  \S+ +\d+  train ", status := gangrun(cluster, work, "status", job).stdout, re.M):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status.startswith("RUNNING"), status
    stacks = gangrun(cluster, work, "stacks", job)
    assert stacks.returncode == 0 and stacks.stdout.count('"MainThread"') == 2, stacks.stdout + stacks.stderr
    followed = gangrun(cluster, work, "logs", "--follow", job)
    verdicts = set(re.findall(r"gangrun: hang: rank \d.*stacks in \S+", followed.stdout))
    # Both nodes print the same verdict: rank 1 stalled on one node, rank 0 waited on the other.
    assert len(verdicts) == 1 and "rank 1 (" in verdicts.pop().split(";")[0], followed.stdout[-4000:]
    assert "ended with exit 124" in followed.stdout, followed.stdout[-3000:]
    [folder] = out.glob("hang-*")
    assert sorted(p.name for p in folder.glob("rank*.txt")) == ["rank0.txt", "rank1.txt"]


def test_a_config_typo_is_refused_before_sbatch_and_nothing_is_queued(cluster: SlurmCluster, work: Path) -> None:
    name = "typo-refused"
    result = gangrun(cluster, work, "submit", "--target", "slurm", "--name", name, "-m", "train", "--config", "nope",
                     timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "-m train: refused its input: --config: 'nope' is not a preset or a file" in result.stderr
    assert not result.stdout
    assert name not in cluster.run("squeue", "-h", "-o", "%j").stdout
    assert not cluster.run("sacct", "-n", "-X", "-o", "JobName%40", "--name", name).stdout.strip()
