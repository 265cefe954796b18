"""Golden tests: the one torchrun argv builder and the local target's rendering of it."""

from __future__ import annotations

from launcher.engines.local.render import render_local
from launcher.spec import Entrypoint, JobSpec, NodeRange
from launcher.torchrun import Rendezvous, torchrun_args

TRAIN = Entrypoint("train", is_module=True, args=("--config", "digits"))
PREFIX = "--log-line-prefix-template=[rank${rank}]: "


def test_static_single_node():
    spec = JobSpec(entrypoint=TRAIN, nproc_per_node=2)
    rdzv = Rendezvous("static", "127.0.0.1", 29500, node_rank=0)
    assert torchrun_args(spec, rdzv) == [
        "--nnodes=1", "--nproc-per-node=2", "--max-restarts=0",
        "--node-rank=0", "--master-addr=127.0.0.1", "--master-port=29500",
        "--tee=3", PREFIX, "-m", "train", "--config", "digits",
    ]


def test_c10d_multi_node_with_shell_expressions():
    spec = JobSpec(entrypoint=Entrypoint("train.py", is_module=False, args=("--lr", "0.1")),
                   nnodes=NodeRange(4, 4), nproc_per_node=8, max_restarts=3)
    rdzv = Rendezvous("c10d", "$MASTER_HOST", "$PORT", run_id="$SLURM_JOB_ID")
    assert torchrun_args(spec, rdzv, log_dir="/logs") == [
        "--nnodes=4", "--nproc-per-node=8", "--max-restarts=3",
        "--rdzv-backend=c10d", "--rdzv-endpoint=$MASTER_HOST:$PORT", "--rdzv-id=$SLURM_JOB_ID",
        "--log-dir=/logs", "--tee=3", PREFIX, "train.py", "--lr", "0.1",
    ]


def test_elastic_range_and_rdzv_conf():
    spec = JobSpec(entrypoint=TRAIN, nnodes=NodeRange(1, 2), nproc_per_node="auto")
    rdzv = Rendezvous("c10d", "node0", 29400, run_id="r1", conf={"last_call_timeout": "1", "join_timeout": "60"})
    args = torchrun_args(spec, rdzv)
    assert args[:2] == ["--nnodes=1:2", "--nproc-per-node=auto"]
    assert "--rdzv-conf=join_timeout=60,last_call_timeout=1" in args


def test_local_one_node_is_static_and_sets_threads():
    spec = JobSpec(entrypoint=TRAIN, nproc_per_node=2, env={"FOO": "a b"})
    [agent] = render_local(spec, port=1234, run_id="x", python="py", cpu_count=8, environ={})
    assert agent.argv[:4] == ["py", "-P", "-m", "launcher.agent"]
    assert "--master-port=1234" in agent.argv and "--rdzv-backend=c10d" not in agent.argv
    assert agent.env == {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4", "FOO": "a b"}
    assert agent.shell_line().startswith("PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 FOO='a b' py -P -m launcher.agent")


def test_local_two_nodes_share_one_c10d_endpoint():
    spec = JobSpec(entrypoint=TRAIN, nnodes=NodeRange(2, 2), nproc_per_node=1)
    agents = render_local(spec, port=4321, run_id="run7", python="py", environ={"OMP_NUM_THREADS": "2"})
    assert len(agents) == 2
    for agent in agents:
        assert "--rdzv-endpoint=127.0.0.1:4321" in agent.argv and "--rdzv-id=run7" in agent.argv
        assert "OMP_NUM_THREADS" not in agent.env  # the user's own setting wins
    assert agents[0].argv == agents[1].argv


def test_local_elastic_does_not_wait_30s_for_nodes():
    spec = JobSpec(entrypoint=TRAIN, nnodes=NodeRange(1, 2))
    agents = render_local(spec, port=1, run_id="r", python="py")
    assert len(agents) == 2
    assert "--rdzv-conf=last_call_timeout=1" in agents[0].argv


def test_local_given_endpoint_is_used():
    spec = JobSpec(entrypoint=TRAIN, rdzv_endpoint="10.0.0.5:29400")
    [agent] = render_local(spec, port=1, run_id="r", python="py")
    assert "--rdzv-endpoint=10.0.0.5:29400" in agent.argv
