"""Image references: the OCI grammar every target checks --image against, before anything is rendered."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.images import is_oci_reference
from tests.conftest import gangrun


@pytest.mark.parametrize("text, valid", [
    ("gangrun:latest", True), ("registry.example:5000/team/gangrun:1.0", True),
    ("ghcr.io/x/y@sha256:" + "a" * 64, True), ("[::1]:5000/x", True),
    ("Gangrun:latest", False), ("gangrun:", False), ("a//b", False), ("x y", False), ("-x", False),
    ("gangrun:" + "t" * 129, False), ("Registry/x", False),
])
def test_image_references_follow_the_oci_grammar(text: str, valid: bool) -> None:
    assert is_oci_reference(text) is valid


@pytest.mark.parametrize("target", ["k8s", "slurm"])
def test_a_bad_image_reference_is_refused_before_rendering(target: str, gangrun_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    runtime = ["--container-runtime", "podman"] if target == "slurm" else []
    result = gangrun("render", "--target", target, *runtime, "--image", "My Image:latest", "-m", "train",
                     "--config", "digits", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("gangrun: error: image: 'My Image:latest' is not an image reference")
