"""`gangrun build --export`: the exact command for each Slurm runtime's image format, refused where it cannot run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launcher.build import check_export, export_argvs
from launcher.errors import SpecError
from tests.conftest import REPO


@pytest.mark.parametrize("engine, fmt, dest, argvs", [
    ("podman", "charliecloud", "/img/gangrun", [["ch-convert", "-i", "podman", "gangrun:1", "/img/gangrun"]]),
    ("docker", "enroot", "/img/g.sqsh", [["enroot", "import", "-o", "/img/g.sqsh", "dockerd://gangrun:1"]]),
    ("podman", "enroot", "/img/g.sqsh", [["enroot", "import", "-o", "/img/g.sqsh", "podman://gangrun:1"]]),
    ("docker", "apptainer", "/img/g.sif", [["apptainer", "build", "/img/g.sif", "docker-daemon://gangrun:1"]]),
    ("podman", "apptainer", "/img/g.sif", [
        ["podman", "save", "--format", "oci-archive", "-o", "/img/g.sif.oci.tar", "gangrun:1"],
        ["apptainer", "build", "/img/g.sif", "oci-archive:///img/g.sif.oci.tar"]]),
])
def test_each_format_is_made_by_its_own_tool_from_the_engines_store(engine: str, fmt: str, dest: str,
                                                                    argvs: list[list[str]]) -> None:
    assert export_argvs(engine, "gangrun:1", fmt, Path(dest)) == argvs


def test_a_missing_tool_or_an_existing_destination_stops_before_the_build(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^export: enroot is not on PATH"):
        check_export("enroot", tmp_path / "g.sqsh", which=lambda _: None)
    with pytest.raises(SpecError, match="exists; remove it or pick another DEST; nothing is overwritten"):
        check_export("charliecloud", tmp_path, which=lambda tool: f"/usr/bin/{tool}")


def test_the_dry_run_prints_the_export_after_the_build(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "launcher", "build", "--dry-run", "--engine", "podman",
                           "--context", str(REPO), "--tag", "gangrun:1", "--export", "charliecloud",
                           str(tmp_path / "img")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"ch-convert -i podman gangrun:1 {tmp_path / 'img'}"
    unknown = subprocess.run([sys.executable, "-m", "launcher", "build", "--dry-run", "--engine", "podman",
                              "--context", str(REPO), "--export", "docker", "x"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "export: 'docker' is not a format gangrun exports" in unknown.stderr
