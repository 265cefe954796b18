"""Helpers for tests that need real system programs: install Debian packages once, when we may."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

import pytest


def can_install() -> bool:
    """Root with apt: the CI machine and developers' sandboxes. Elsewhere, tests skip."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


@lru_cache(maxsize=1)
def _apt_update() -> None:
    subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def ensure_debs(programs: dict[str, str], why: str) -> None:
    """Make each program (key) available, installing its Debian package (value) if missing.

    Skips the calling test with a clear reason when a program is missing and cannot be installed;
    under CI=true that is a failure instead, because CI must run every real-engine test.
    """
    missing = {prog: pkg for prog, pkg in programs.items() if shutil.which(prog) is None}
    if not missing:
        return
    if not can_install():
        message = f"{why}: needs {', '.join(missing)} (Debian: {' '.join(sorted(set(missing.values())))})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    _apt_update()
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *sorted(set(missing.values()))],
                   check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
