"""Real podman for the container tests: check its set-up, build the project image, run it.

tests/provision.py installs podman and makes the Debian base image once per machine (no registry
is reachable here); these helpers only check for them. Every podman call gets provision's
CONTAINERS_CONF (runc, ulimits of 1024), every build --pull=never. The base image and build
layers stay in podman's store, so a later run reuses them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.provision import BASE_IMAGE, CHARLIECLOUD_PROGRAMS, PODMAN_PROGRAMS, base_image_exists, podman_env
from tests.system import require_programs, unavailable

REPO = Path(__file__).resolve().parent.parent
IMAGE = "localhost/gangrun:test"
# The CPU torch wheel pip finds on this machine's local disk (~200 MB). PyPI's torchvision cannot
# import beside it, which is fine: train imports torchvision lazily and `digits` never needs it.
TORCH_PIN = "torch==2.13.0"


@dataclass(frozen=True)
class Podman:
    """podman with this machine's settings; ``run`` raises with podman's stderr on failure."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                                 f"\n{proc.stderr[-3000:]}")
        return proc


def ensure_podman(workdir: Path) -> Podman:
    """podman and the base image tests/provision.py makes, or skip (fail under CI=true)."""
    why = "container tests build and run the image with podman"
    require_programs(PODMAN_PROGRAMS, why)
    env = podman_env(workdir)
    if not base_image_exists(env):
        unavailable(f"{why}: podman has no {BASE_IMAGE}")
    return Podman(env)


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
    context = build_context(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "build", "--engine", "podman", "--context", str(context),
         "--tag", IMAGE, "--base-image", BASE_IMAGE, "--", "--pull=never", "--network=host"],
        env=podman.env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"image build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return IMAGE


def charliecloud_image(podman: Podman, workdir: Path) -> Path:
    """The project image as a Charliecloud directory, made by `gangrun build --export charliecloud` (the build
    itself comes from podman's layer cache once build_image ran)."""
    require_programs(CHARLIECLOUD_PROGRAMS, "the Charliecloud job converts and runs the project image")
    context = build_context(workdir)
    dest = workdir / "charliecloud-image"
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "build", "--engine", "podman", "--context", str(context),
         "--tag", IMAGE, "--base-image", BASE_IMAGE, "--export", "charliecloud", str(dest),
         "--", "--pull=never", "--network=host"],
        env={**podman.env, "USER": podman.env.get("USER", "root")}, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"export failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return dest
