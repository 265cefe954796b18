"""`gangrun run --image`: two local nodes, each agent in its own podman container of the project image, meeting
over the host network; SIGTERM stops them with 75 and the same command resumes, with nothing left running."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, child_env
from tests.podman import Podman

pytestmark = [pytest.mark.podman, pytest.mark.multiprocess]


def test_two_nodes_in_podman_stop_with_75_and_the_same_command_resumes(podman_image: tuple[Podman, str],
                                                                       tmp_path: Path) -> None:
    podman, image = podman_image
    env = {**child_env(tmp_path), "CONTAINERS_CONF": podman.env["CONTAINERS_CONF"]}
    out = tmp_path / "out"
    argv = [str(BIN / "gangrun"), "run", "--image", image, "--nnodes", "2", "--nproc-per-node", "1",
            "--env", f"MPLCONFIGDIR={tmp_path / 'mpl'}", "-m", "train", "--config", "digits", f"output_dir={out}",
            "train.max_steps=400", "metrics.plot=false", "checkpoint.every=1000"]
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        first = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while "[rank0]: step     20" not in log.read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        code = first.wait(120)
    finally:
        if first.poll() is None:
            first.kill()
    text = log.read_text()
    assert code == 75, text[-3000:]
    assert "world: 2 ranks on 2 nodes" in text and "stopping at step" in text, text[-3000:]
    second = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "checkpoint: resumed from" in second.stdout and "world: 2 ranks on 2 nodes" in second.stdout
    assert (out / "checkpoints" / "step-00000400" / "commit.json").is_file()
    left = podman.run("ps", "-a", "--filter", "name=gangrun-", "--format", "{{.Names}}").stdout.split()
    assert left == [], left
