"""Slurm jobs inside --image: each runtime's exact lines (golden, shellcheck-clean), quoting, and refusals."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from launcher.agent.guard import split_agent_args
from launcher.engines.slurm.options import SlurmOptions
from launcher.errors import SpecError
from launcher.spec import parse_mount
from tests.conftest import REPO, gangrun
from tests.test_slurm_script import render, shellcheck, two_by_eight

GOLDEN = REPO / "tests" / "golden"
IMAGES = {"pyxis": "nvcr.io#nvidia/pytorch:24.01-py3", "apptainer": "/shared/images/gangrun.sif",
          "charliecloud": "/shared/images/gangrun", "podman": "registry.example/gangrun:1.0"}


def in_container(runtime: str, mounts: tuple[str, ...] = ("/data/imagenet:/data:ro",)) -> str:
    spec, options = two_by_eight()
    spec = dataclasses.replace(spec, image=IMAGES[runtime], mounts=mounts).validate()
    return render(spec, dataclasses.replace(options, container_runtime=runtime))


@pytest.mark.parametrize("runtime", sorted(IMAGES))
def test_each_runtime_renders_its_own_exact_lines(runtime: str, tmp_path: Path) -> None:
    text = in_container(runtime)
    path = GOLDEN / f"slurm_2x8_gpu_{runtime}.sbatch"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"rendering changed; if intended, rerun with UPDATE_GOLDEN=1 and review {path}"
    shellcheck(text, tmp_path)
    # The image's own python runs the agent, with the job folder and the working directory bound.
    assert " python -P -m launcher.agent " in text.replace("\\\n  ", " ")
    assert "/shared/gangrun/slurm/train" in text.split("srun", 1)[1] and "/home/me/project" in text


def test_a_mount_path_with_spaces_or_quotes_is_one_quoted_word(tmp_path: Path) -> None:
    text = in_container("apptainer", ("/data/my runs/it's here:/data",))
    assert "'/shared/gangrun/slurm/train:/shared/gangrun/slurm/train,/home/me/project:/home/me/project," \
           "/data/my runs/it'\"'\"'s here:/data'" in text
    shellcheck(text, tmp_path)


@pytest.mark.parametrize("runtime, image, message", [
    ("podman", "Not An Image", "is not an image reference"),
    ("apptainer", "gangrun.sif", "is not what apptainer runs"),
    ("apptainer", "docker://UPPER", "is not an image reference"),
    ("charliecloud", "gangrun:latest", "is not what charliecloud runs"),
    ("pyxis", "/images/x.tar", "is not what pyxis runs"),
    ("runc", "gangrun:latest", "is not a runtime gangrun renders"),
])
def test_an_image_a_runtime_cannot_run_is_refused(runtime: str, image: str, message: str) -> None:
    spec, options = two_by_eight()
    with pytest.raises(SpecError, match=message):
        dataclasses.replace(options, container_runtime=runtime).validate(dataclasses.replace(spec, image=image))


@pytest.mark.parametrize("text, message", [
    ("data:/data", "is not an absolute path"), ("/a:/b:rw", "is not SRC:DST or SRC:DST:ro"),
    ("/a,b:/c", "holds a ','"), ("/a", "is not SRC:DST"),
])
def test_bad_mounts_are_refused(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_mount(text)


@pytest.mark.parametrize("flags, line", [
    (["--image", "registry.example/gangrun:1.0"], "gangrun: error: image: is not run on Slurm without a container "
                                                  "runtime; add --container-runtime"),
    (["--mount", "/data:/data"], "gangrun: error: mount: binds folders into a container, and this job runs on "
                                 "bare metal"),
    (["--container-runtime", "podman"], "gangrun: error: image: is needed by --container-runtime podman"),
])
def test_an_image_never_ignored_on_slurm(flags: list[str], line: str, gangrun_env: dict[str, str],
                                         tmp_path: Path) -> None:
    result: subprocess.CompletedProcess[str] = gangrun("render", "--target", "slurm", *flags, "-m", "train",
                                                       "--config", "digits", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(line), result.stderr
    assert result.stderr.count("\n") == 1


def test_options_default_to_bare_metal() -> None:
    assert SlurmOptions().container_runtime is None


def test_under_podman_the_agent_passes_the_notice_to_every_worker() -> None:
    podman, pyxis = in_container("podman"), in_container("pyxis")
    assert "--pass-notice" in podman and "--pass-notice" not in pyxis
    settings, rest = split_agent_args(["--stop-grace=120", "--pass-notice", "--nnodes=2"])
    assert settings.pass_notice and rest == ["--nnodes=2"]
