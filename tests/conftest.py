"""Shared fixtures: the project's virtualenv programs, a clean environment for child runs, the real engines.

Every fixture lives here (or is defined here around a helper module's function), so tests never
import fixtures. A test using a real engine's fixture must carry that engine's marker, or
collection fails: `make test-fast` deselects by marker and must never start an engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.podman import Podman, build_image, charliecloud_image, ensure_podman
from tests.s3_server import S3Server, running_s3_server
from tests.slurm_cluster import SlurmCluster, start_cluster

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def child_env(tmp: Path) -> dict[str, str]:
    """Environment for running `gangrun`/`python -m train` as a user would: no inherited job state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GANGRUN_", "RANK", "LOCAL_RANK",
                                                                   "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MPLCONFIGDIR"] = str(tmp / "mpl")
    # Local runs leave a handle (gangrun list); each test keeps its own.
    env["GANGRUN_HOME"] = str(tmp / "gangrun-home")
    return env


@pytest.fixture
def gangrun_env(tmp_path: Path) -> dict[str, str]:
    return child_env(tmp_path)


def gangrun(*args: str, env: dict[str, str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the installed `gangrun` CLI as a user would, capturing its output."""
    return subprocess.run([str(BIN / "gangrun"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def plant_decoys(folder: Path) -> None:
    """A user's own train.py and launcher/ package in ``folder``: neither may ever run in place of ours."""
    (folder / "train.py").write_text("raise SystemExit('DECOY: the user train.py ran')\n")
    (folder / "launcher").mkdir(exist_ok=True)
    (folder / "launcher" / "__init__.py").write_text("raise SystemExit('DECOY: the user launcher/ ran')\n")
    (folder / "launcher" / "agent.py").write_text("raise SystemExit('DECOY: the user launcher/agent.py ran')\n")


# The fixture that starts each real engine, and the marker its tests carry (pyproject.toml declares them).
ENGINE_FIXTURES = {"cluster": "slurm", "podman_image": "podman", "s3_server": "s3"}


def unmarked_engine_uses(items: list[pytest.Item]) -> list[str]:
    """One line per test that uses a real engine's fixture, directly or through another, without its marker."""
    return [f"{item.nodeid}: uses the {fixture!r} fixture, so it needs @pytest.mark.{marker}"
            for item in items for fixture, marker in ENGINE_FIXTURES.items()
            if fixture in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None]


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything: a test-fast run checks every test too
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = unmarked_engine_uses(items)
    if unmarked:
        raise pytest.UsageError("tests that start a real engine must carry its marker:\n" + "\n".join(unmarked))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A two-node Slurm on localhost for the whole session: its daemons start once and stop at the end."""
    running = start_cluster(tmp_path_factory.mktemp("slurm"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, with one empty bucket (tests.s3_server.BUCKET)."""
    with running_s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def podman_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Podman, str]:
    """podman with this machine's settings, and the project image built from docker/ (layers cached by podman)."""
    workdir = tmp_path_factory.mktemp("podman")
    podman = ensure_podman(workdir)
    return podman, build_image(podman, workdir)


@pytest.fixture(scope="session")
def charliecloud_dir(podman_image: tuple[Podman, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project image as a Charliecloud directory under /tmp (ch-run binds the host's /tmp)."""
    podman, _ = podman_image
    return charliecloud_image(podman, tmp_path_factory.mktemp("charliecloud"))
