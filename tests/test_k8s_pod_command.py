"""Each shipped manifest's pod command, run here with the environment its controller would inject.

No cluster and no containers: for every node, resolve the controller's PET_* values (the rank-0 DNS
name mapped to loopback, as a headless Service maps it to rank 0's pod), expand ``$(VAR)`` as the
kubelet does, and start the command. A fast check that what we render trains, for all four forms,
from a working directory holding a decoy train.py and launcher/ (an image's workdir may hold both).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from launcher.engines.k8s.manifests import form_of
from tests.conftest import plant_decoys
from tests.k8s_cases import REPO, controller_env, expand, header_command, pod_container, rendered, spec_for, workload

MANIFESTS = sorted((REPO / "k8s").glob("*.yaml"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_pod_command_trains(path, tmp_path, gangrun_env):
    argv = header_command(path)
    spec, options = spec_for(argv)
    plant_decoys(tmp_path)
    obj = workload(rendered(argv))
    container, command = pod_container(obj)
    nodes = spec.nnodes.max
    port = str(free_port())
    procs = []
    for node in range(nodes):
        env = controller_env(obj["kind"], spec.job_name, node, container, nnodes=nodes, nproc=str(spec.nproc_per_node))
        assert env["PET_MASTER_ADDR"] == form_of(spec, options).master_addr
        env.update(PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port)
        pod_argv = expand(command, env)
        assert not any("$(" in arg for arg in pod_argv), pod_argv
        assert pod_argv[0] == "python"
        pod_argv = [sys.executable, *pod_argv[1:], f"output_dir={tmp_path / f'node{node}'}", "train.max_steps=3",
                    "train.micro_batch_size=16"]
        procs.append(subprocess.Popen(pod_argv, env={**gangrun_env, **env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert not any("DECOY" in out for out in outputs), outputs[0][-2000:]
    for node, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"node {node} exited {proc.returncode}:\n{out[-4000:]}"
    # Rank 0 reports the world it trained in: every node's processes joined one group.
    assert f"training: world {nodes * int(spec.nproc_per_node)}," in outputs[0]
