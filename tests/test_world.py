"""The world asserted after the rendezvous: hosts and nodes against the job's spec, one line when they differ."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BIN
from train.world import Expected, Member, describe, lone_copy_problem, spans, world_problem


def world(*hosts_by_node: tuple[str, ...]) -> list[Member]:
    members, rank = [], 0
    for node, hosts in enumerate(hosts_by_node):
        for host in hosts:
            members.append(Member(rank, node, host))
            rank += 1
    return members


def test_a_world_is_described_node_by_node() -> None:
    assert spans([5, 0, 1, 2, 7]) == "0-2,5,7"
    assert describe(world(("a", "a"), ("b", "b"))) == ("4 ranks on 2 nodes: node 0 on a (ranks 0-1), "
                                                       "node 1 on b (ranks 2-3)")


@pytest.mark.parametrize("members, want, problem", [
    (world(("a", "a"), ("b", "b")), Expected(2, 2, 2), None),
    # A run on one machine: every node on the same host.
    (world(("a",), ("a",)), Expected(2, 2, 1), None),
    (world(("a", "a")), Expected(2, 2, 2), "1 node(s) joined, the job asks for 2"),
    (world(("a", "a"), ("b", "b"), ("c",)), Expected(1, 4, 2), "5 ranks joined, the job asks for 6 (2 per node)"),
    (world(("a",), ("a",), ("b",)), None, "3 nodes joined from 2 hosts: a runs more than one node"),
    (world(("a", "b")), None, "node 0's ranks are on several hosts (a, b)"),
    (world(("a",), ("b",), ("c",)), Expected(2, 4, None), None),
])
def test_a_world_other_than_the_spec_is_named(members: list[Member], want: Expected | None,
                                                 problem: str | None) -> None:
    assert world_problem(members, want) == problem


def test_the_agents_expectation_parses() -> None:
    assert Expected.parse("2/4") == Expected(2, 2, 4)
    assert Expected.parse("1:4/auto") == Expected(1, 4, None)


def test_copies_started_without_torchrun_would_each_train_alone() -> None:
    assert "2 Slurm tasks each started without torchrun" in str(lone_copy_problem({"SLURM_NTASKS": "2"}))
    assert lone_copy_problem({"SLURM_NTASKS": "2", "RANK": "0"}) is None
    assert lone_copy_problem({}) is None


@pytest.mark.multiprocess
def test_a_world_smaller_than_the_spec_stops_every_rank_with_one_line(
        gangrun_env: dict[str, str], tmp_path: Path) -> None:
    # torchrun started without the agent, told that the job asked for 2 nodes of 2: it forms a world of 2.
    env = {**gangrun_env, "GANGRUN_EXPECTED_WORLD": "2/2"}
    proc = subprocess.run([str(BIN / "torchrun"), "--nproc-per-node=2", "-m", "train", "--config", "digits",
                           f"output_dir={tmp_path / 'run'}"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "train: error:" in line]
    assert proc.returncode != 0
    assert len(errors) == 1 and "world: 1 node(s) joined, the job asks for 2 (2 ranks on 1 node" in errors[0], \
        proc.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.multiprocess
def test_slurm_tasks_started_without_torchrun_refuse_to_train_alone(gangrun_env: dict[str, str],
                                                                      tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-P", "-m", "train", "--config", "digits", f"output_dir={tmp_path}"],
                          env={**gangrun_env, "SLURM_NTASKS": "2"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("train: error: world: 2 Slurm tasks each started without torchrun")
