"""What the real-engine tests need from this machine, checked but never installed.

tests/provision.py installs it (`make provision`, which `make test` runs first). Here a missing
program, host name or image skips the test with a message that names that command; under CI=true
it fails instead, because CI must run every real-engine test.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from tests.provision import hosts_problems, missing_programs

PROVISION = "make provision (python3 tests/provision.py, as root)"


def unavailable(message: str, provisioning: bool = True) -> NoReturn:
    """Skip the calling test, or fail it under CI=true; name the provisioning command when it would help."""
    if provisioning:
        message = f"{message}; run `{PROVISION}`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_programs(programs: dict[str, str], why: str) -> None:
    """Each program (key) must be on PATH; its Debian package (value) goes into the message."""
    missing = missing_programs(programs)
    if missing:
        unavailable(f"{why}: needs {', '.join(missing)} (Debian: {' '.join(sorted(set(missing.values())))})")


def require_root(why: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{why}: needs root", provisioning=False)


def require_hosts(why: str) -> None:
    """The Slurm node names resolve to this machine through /etc/hosts."""
    absent, wrong = hosts_problems()
    if absent:
        unavailable(f"{why}: /etc/hosts lacks {', '.join(absent)}")
    if wrong:
        unavailable(f"{why}: {'; '.join(wrong)}", provisioning=False)
