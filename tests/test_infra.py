"""The test tiers hold: engine fixtures need their markers, markers are declared, provisioning only reports."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ENGINE_FIXTURES, REPO
from tests.provision import hosts_addresses, hosts_problems

UNMARKED = """\
import pytest

@pytest.fixture
def work(cluster):
    return cluster

def test_unmarked(s3_server):
    pass

def test_unmarked_through_another(work):
    pass

@pytest.mark.slurm
def test_marked_through_another(work):
    pass

@pytest.mark.s3
def test_marked(s3_server):
    pass
"""


def collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Collect a test file beside a conftest that is exactly ours."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n")
    (tmp_path / "test_case.py").write_text(UNMARKED)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args,
                           "test_case.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("select", [[], ["-m", "not (slurm or s3)"]], ids=["all", "deselected"])
def test_engine_fixture_without_its_marker_fails_collection(tmp_path: Path, select: list[str]) -> None:
    # Even when -m would deselect it: the fast tier checks every test, so the tiers cannot drift.
    result = collect(tmp_path, *select)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "test_case.py::" in line]
    # A fixture reached through another one counts too.
    assert errors == ["test_case.py::test_unmarked: uses the 's3_server' fixture, so it needs @pytest.mark.s3",
                      "test_case.py::test_unmarked_through_another: uses the 'cluster' fixture, so it needs "
                      "@pytest.mark.slurm"], result.stderr


def test_every_engine_marker_is_declared() -> None:
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {line.split(":")[0] for line in options["markers"]}
    assert set(ENGINE_FIXTURES.values()) | {"multiprocess"} <= declared
    assert "--strict-markers" in options["addopts"].split()


def test_hosts_file_names_and_addresses(tmp_path: Path) -> None:
    text = "127.0.0.1 localhost  # the loopback\n# 10.0.0.1 node1\n\n127.0.0.1 node2\n10.1.1.1 node2 node1\n"
    assert hosts_addresses(text) == {"localhost": "127.0.0.1", "node2": "127.0.0.1", "node1": "10.1.1.1"}
    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    missing, wrong = hosts_problems(hosts)
    assert missing == []
    assert wrong == [f"{hosts} maps node1 to 10.1.1.1, the Slurm tests need 127.0.0.1: edit that line"]
    assert hosts_problems(tmp_path / "none") == (["node1", "node2"], [])


def test_provision_check_changes_nothing_and_passes_outside_ci(tmp_path: Path) -> None:
    """`--check` only reports, one line per missing thing; only CI=true turns a missing thing into exit 1."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    result = subprocess.run([sys.executable, str(REPO / "tests" / "provision.py"), "--check"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout and all(line.startswith("provision: ") for line in result.stdout.splitlines())
