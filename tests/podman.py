"""Real podman for the container tests: install it, make a Debian base image, build the project image.

Measured on the CI machine: crun fails there ("cgroups in hybrid mode not supported") and runc works
with nofile/nproc ulimits of 1024, so every podman call gets a CONTAINERS_CONF saying so. No registry
is reachable: the base image is made with debootstrap and imported, and every build uses
--pull=never. The base image and build layers stay in podman's store, so a later run reuses them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.system import ensure_debs

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "localhost/gangrun-test-base:bookworm"
IMAGE = "localhost/gangrun:test"
SUITE = "bookworm"
# The CPU torch wheel pip finds on this machine's local disk (~200 MB). PyPI's torchvision cannot
# import beside it, which is fine: train imports torchvision lazily and `digits` never needs it.
TORCH_PIN = "torch==2.13.0"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


@dataclass(frozen=True)
class Podman:
    """podman with this machine's settings; ``run`` raises with podman's stderr on failure."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")
        return proc

    def image_exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0


def ensure_podman(workdir: Path) -> Podman:
    ensure_debs({"podman": "podman", "runc": "runc", "debootstrap": "debootstrap", "catatonit": "catatonit"},
                "container tests build and run the image with podman")
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return Podman({**os.environ, "CONTAINERS_CONF": str(conf)})


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the only one reachable), from its sources."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            for match in re.finditer(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", path.read_text(), re.M):
                return match.group(1)
    raise AssertionError("no Debian mirror in /etc/apt/sources*: cannot debootstrap a base image")


def ensure_base_image(podman: Podman, workdir: Path) -> str:
    """A minimal Debian with python3 and venv, imported into podman once per machine."""
    if podman.image_exists(BASE_IMAGE):
        return BASE_IMAGE
    rootfs = workdir / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", SUITE, str(rootfs),
                    debian_mirror()], check=True, capture_output=True, timeout=900)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=podman.env, check=True,
                   capture_output=True, timeout=600)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    return BASE_IMAGE


def build_context(workdir: Path) -> Path:
    """The repository's image inputs plus a CPU torch wheel in docker/wheels/, in a scratch folder."""
    context = workdir / "context"
    context.mkdir(exist_ok=True)
    for name in ("pyproject.toml", ".dockerignore"):
        shutil.copy2(REPO / name, context / name)
    for folder in ("launcher", "train", "docker"):
        shutil.copytree(REPO / folder, context / folder, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", TORCH_PIN, "--no-deps",
                    "-d", str(context / "docker" / "wheels")], check=True, timeout=600)
    return context


def build_image(podman: Podman, workdir: Path) -> str:
    """The project image from docker/Dockerfile via `gangrun build`, reaching pip's index as pip here does."""
    base = ensure_base_image(podman, workdir)
    context = build_context(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "build", "--engine", "podman", "--context", str(context),
         "--tag", IMAGE, "--base-image", base, "--", "--pull=never", "--network=host"],
        env=podman.env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"image build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return IMAGE
