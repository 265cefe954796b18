"""`gangrun build`: the training image from docker/Dockerfile, with docker or podman, whichever is here."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import SpecError

# The tag `gangrun build` makes, and the image a Kubernetes job runs when --image is not given.
DEFAULT_IMAGE = "gangrun:latest"
ENGINES = ("docker", "podman")
DOCKERFILE = Path("docker") / "Dockerfile"


@dataclass(frozen=True)
class BuildPlan:
    """One image build: the engine, what it builds, and how pip in the build reaches its index."""

    engine: str
    tag: str = DEFAULT_IMAGE
    context: Path = Path(".")
    base_image: str | None = None
    pip_cert: str | None = None
    pip_index_url: str | None = None
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def build_argv(self) -> list[str]:
        argv = [self.engine, "build", "-f", str(self.context / DOCKERFILE), "-t", self.tag]
        if self.base_image:
            argv += ["--build-arg", f"BASE_IMAGE={self.base_image}"]
        if self.pip_index_url:
            argv += ["--build-arg", f"PIP_INDEX_URL={self.pip_index_url}"]
        if self.pip_cert:
            # A secret, not a COPY or build arg: the CA bundle never lands in a layer or the history.
            argv += ["--secret", f"id=pip_cert,src={self.pip_cert}"]
        return [*argv, *self.extra_args, str(self.context)]

    def push_argv(self) -> list[str]:
        return [self.engine, "push", self.tag]


# The image formats Slurm's container runtimes read, and the tool that makes each from the built tag.
EXPORTS = {"charliecloud": "ch-convert", "apptainer": "apptainer", "enroot": "enroot"}


def export_argvs(engine: str, tag: str, fmt: str, dest: Path) -> list[list[str]]:
    """The commands that turn the built ``tag`` into ``fmt`` at ``dest``, read from the engine's own store.

    Apptainer reads docker's daemon directly, podman's only through an OCI archive written beside DEST.
    """
    if fmt == "charliecloud":
        return [["ch-convert", "-i", engine, tag, str(dest)]]
    if fmt == "enroot":
        return [["enroot", "import", "-o", str(dest), f"{'dockerd' if engine == 'docker' else 'podman'}://{tag}"]]
    if engine == "docker":
        return [["apptainer", "build", str(dest), f"docker-daemon://{tag}"]]
    archive = dest.with_name(dest.name + ".oci.tar")
    return [["podman", "save", "--format", "oci-archive", "-o", str(archive), tag],
            ["apptainer", "build", str(dest), f"oci-archive://{archive}"]]


def check_export(fmt: str, dest: Path, which: Callable[[str], str | None] = shutil.which) -> None:
    """Before building: the export's tool is here, and DEST would overwrite nothing."""
    tool = EXPORTS[fmt]
    if which(tool) is None:
        raise SpecError("export", f"{tool} is not on PATH, and it makes {fmt} images",
                        f"install {fmt}, or export on a machine that has it (the README says how by hand)")
    if dest.exists():
        raise SpecError("export", f"{dest} exists", "remove it or pick another DEST; nothing is overwritten")


def find_engine(which: Callable[[str], str | None] = shutil.which) -> str:
    for engine in ENGINES:
        if which(engine):
            return engine
    raise SpecError("engine", "neither docker nor podman is on PATH", "install one of them, or pass --engine")


def pip_settings(environ: Mapping[str, str] = os.environ) -> tuple[str | None, str | None]:
    """(CA bundle, index URL) as pip on this machine sees them: PIP_* variables, then `pip config`."""
    cert, index = environ.get("PIP_CERT"), environ.get("PIP_INDEX_URL")
    if cert is None or index is None:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            key, _, value = line.partition("=")
            value = value.strip().strip("'\"")
            if key.endswith(".cert") and cert is None:
                cert = value
            if key.endswith(".index-url") and not key.endswith("extra-index-url") and index is None:
                index = value
    return (cert if cert and Path(cert).is_file() else None), (index or None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tag", "-t", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    parser.add_argument("--push", action="store_true", help="push the tag after building")
    parser.add_argument("--engine", choices=ENGINES, help="docker or podman (default: the first found)")
    parser.add_argument("--base-image", help="BASE_IMAGE build argument (default: the Dockerfile's CUDA image)")
    parser.add_argument("--context", type=Path, default=Path("."), help="repository root (default .)")
    parser.add_argument("--export", nargs=2, metavar=("FORMAT", "DEST"),
                        help=f"after building, convert the image for a Slurm runtime: {', '.join(EXPORTS)} "
                             "(a ch-convert directory, an apptainer .sif, an enroot .sqsh)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    parser.add_argument("build_args", nargs="*", metavar="-- ENGINE_ARG",
                        help="passed to `<engine> build` as is (after --), e.g. -- --pull=never")


def plan_from_args(args: argparse.Namespace) -> BuildPlan:
    if not (args.context / DOCKERFILE).is_file():
        raise SpecError("context", f"no {DOCKERFILE} under {args.context}", "run from the gangrun repository root")
    cert, index = pip_settings()
    return BuildPlan(engine=args.engine or find_engine(), tag=args.tag, context=args.context,
                     base_image=args.base_image, pip_cert=cert, pip_index_url=index,
                     extra_args=tuple(args.build_args))


def run_build(args: argparse.Namespace) -> int:
    """Build (and push); with --dry-run print the commands instead. Returns the engine's exit status."""
    plan = plan_from_args(args)
    commands = [plan.build_argv(), *([plan.push_argv()] if args.push else [])]
    if args.export is not None:
        fmt, dest = args.export[0], Path(args.export[1]).absolute()
        if fmt not in EXPORTS:
            raise SpecError("export", f"'{fmt}' is not a format gangrun exports", f"use one of: {', '.join(EXPORTS)}")
        if not args.dry_run:
            check_export(fmt, dest)
        commands += export_argvs(plan.engine, plan.tag, fmt, dest)
    for argv in commands:
        print(shlex.join(argv), flush=True)
        if not args.dry_run:
            code = subprocess.run(argv).returncode
            if code:
                return code
    return 0
