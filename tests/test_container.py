"""The image for real: lint docker/, build it with podman, run a 2-node job in one pod as uid 1000.

The two containers get exactly the PET_* environment and command the rendered Indexed Job gives
its pods; rank 0's DNS name resolves through the pod's /etc/hosts, as the headless Service would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.k8s_cases import REPO, controller_env, expand, pod_container, rendered, workload
from tests.podman import Podman
from train.compat import TORCH_FLOOR, torch_version

BIN = Path(sys.executable).parent
JOB_NAME = "digits"
# Four steps take seconds; a job still running after this hangs, and its logs say where.
WAIT_S = 240


def test_hadolint_clean() -> None:
    proc = subprocess.run([str(BIN / "hadolint"), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shellcheck_clean() -> None:
    scripts = sorted((REPO / "docker").glob("*.sh"))
    assert scripts
    proc = subprocess.run([str(BIN / "shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_dry_run_prints_the_command_with_the_ca_as_a_secret(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "launcher", "build", "--dry-run", "--engine", "podman",
                           "--tag", "example/gangrun:1"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": str(BIN), "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.startswith("podman build -f docker/Dockerfile -t example/gangrun:1")
    assert "--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt" in line
    assert "COPY" not in (REPO / "docker" / "Dockerfile").read_text().split("pip_cert")[0].splitlines()[-1]


# The tests below use the session's `podman_image` fixture (tests/conftest.py): the image is built once.
@pytest.mark.podman
def test_image_runs_as_uid_1000(podman_image: tuple[Podman, str]) -> None:
    podman, image = podman_image
    proc = podman.run("run", "--rm", "--pull=never", image, "id", "-u")
    assert proc.stdout.strip() == "1000"


@pytest.mark.podman
def test_the_images_torch_is_at_or_above_the_declared_floor(podman_image: tuple[Podman, str]) -> None:
    podman, image = podman_image
    version = podman.run("run", "--rm", "--pull=never", image, "python", "-c",
                         "import torch; print(torch.__version__)").stdout.strip()
    assert torch_version(version) >= TORCH_FLOOR, f"the image holds torch {version}"
    # The program's own check agrees, inside the image.
    podman.run("run", "--rm", "--pull=never", image, "python", "-c",
               "from train.compat import torch_floor_problem as p; assert p() is None, p()")


@pytest.mark.podman
@pytest.mark.multiprocess
def test_two_node_job_in_one_pod(podman_image: tuple[Podman, str], tmp_path: Path) -> None:
    """World size 4 (2 nodes x 2 processes) trains a few steps of digits from the rendered manifest."""
    podman, image = podman_image
    argv = ["render", "--target", "k8s", "--kind", "job", "--name", JOB_NAME, "--nnodes", "2",
            "--nproc-per-node", "2", "--image", image, "-m", "train", "--config", "digits",
            "output_dir=/workspace/out", "train.max_steps=4", "train.micro_batch_size=16"]
    obj = workload(rendered(argv))
    container, command = pod_container(obj)
    pod = f"gangrun-test-{tmp_path.name[-12:]}"
    addr = controller_env("Job", JOB_NAME, 0, container, nnodes=2, nproc="2")["PET_MASTER_ADDR"]
    podman.run("pod", "create", "--name", pod, f"--add-host={addr}:127.0.0.1")
    try:
        names = []
        for node in range(2):
            env = controller_env("Job", JOB_NAME, node, container, nnodes=2, nproc="2")
            name = f"{pod}-node{node}"
            flags = [f"--env={k}={v}" for k, v in env.items()]
            podman.run("run", "-d", "--pull=never", "--pod", pod, "--name", name, "--shm-size=256m",
                       "--env=OMP_NUM_THREADS=1", *flags, image, *expand(command, env))
            names.append(name)
        try:
            codes = podman.run("wait", *names, timeout=WAIT_S).stdout.split()
        except subprocess.TimeoutExpired:
            codes = [f"still running after {WAIT_S} s"]
        logs = {n: podman.run("logs", n).stdout + podman.run("logs", n).stderr for n in names}
        assert codes == ["0", "0"], "\n".join([str(codes)] + [f"--- {n}\n{text[-3000:]}" for n, text in logs.items()])
        assert "training: world 4," in logs[names[0]]
        user = podman.run("inspect", "--format", "{{.Config.User}}", names[0]).stdout.strip()
        assert user == "1000:1000"
    finally:
        podman.run("pod", "rm", "--force", pod, check=False)
