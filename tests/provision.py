"""Provision this machine for the real-engine tests: Debian packages, two /etc/hosts names, podman's base image.

    python3 tests/provision.py [--check]     (`make provision`; `make test` runs it first)

What is already there is left alone, so on a provisioned machine this takes about a second. As root
with apt-get it installs what is missing; `--check`, or anyone else, only prints one line per
missing thing and exits 0, so the tests that need it skip. Under CI=true a missing thing is a
failure (exit 1): CI must run every real-engine test. pytest itself never installs anything:
tests/system.py checks these same facts and names this command.

Standard library only, so it runs with any Python 3.11 before the project is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Program -> the Debian package that ships it, per engine's tests.
SLURM_PROGRAMS = {
    "sbatch": "slurm-client", "sacct": "slurm-client", "slurmctld": "slurmctld", "slurmd": "slurmd",
    "slurmdbd": "slurmdbd", "munged": "munge", "mariadbd": "mariadb-server", "mariadb-install-db": "mariadb-server",
}
# catatonit is the pause process of every `podman pod`; runc because crun fails here (tests/podman.py).
PODMAN_PROGRAMS = {"podman": "podman", "runc": "runc", "catatonit": "catatonit"}
# A Slurm job in the project image (tests/test_slurm_charliecloud.py): ch-run, and ch-convert to make it.
CHARLIECLOUD_PROGRAMS = {"ch-run": "charliecloud-runtime", "ch-convert": "charliecloud-builders"}
# Only provisioning needs debootstrap: it makes the base image below.
PROVISION_PROGRAMS = {"debootstrap": "debootstrap"}

# torchrun's rendezvous host in the Slurm tests is a node name; both nodes are this machine.
HOSTS_FILE = Path("/etc/hosts")
SLURM_NODES = ("node1", "node2")
LOOPBACK = "127.0.0.1"

# No registry is reachable: the container tests build on a Debian made by debootstrap and imported.
BASE_IMAGE = "localhost/gangrun-test-base:bookworm"
SUITE = "bookworm"
# Measured on the CI machine: crun fails ("cgroups in hybrid mode not supported"); runc works with
# nofile/nproc ulimits of 1024. Every podman call, here and in the tests, gets this configuration.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def can_install() -> bool:
    """Root with apt-get: the CI machine and developers' sandboxes."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def missing_programs(programs: dict[str, str]) -> dict[str, str]:
    """The programs (with their Debian package) not on PATH."""
    return {prog: pkg for prog, pkg in programs.items() if shutil.which(prog) is None}


def hosts_addresses(text: str) -> dict[str, str]:
    """Each name in an /etc/hosts text and the address it resolves to (the first line naming it wins)."""
    addresses: dict[str, str] = {}
    for line in text.splitlines():
        address, *names = line.split("#", 1)[0].split() or [""]
        for name in names:
            addresses.setdefault(name, address)
    return addresses


def hosts_problems(hosts: Path = HOSTS_FILE) -> tuple[list[str], list[str]]:
    """(node names missing from /etc/hosts, lines about node names that resolve elsewhere)."""
    addresses = hosts_addresses(hosts.read_text() if hosts.exists() else "")
    missing = [name for name in SLURM_NODES if name not in addresses]
    wrong = [f"{hosts} maps {name} to {addresses[name]}, the Slurm tests need {LOOPBACK}: edit that line"
             for name in SLURM_NODES if name in addresses and addresses[name] != LOOPBACK]
    return missing, wrong


def podman_env(workdir: Path) -> dict[str, str]:
    """The environment for podman calls with this machine's CONTAINERS_CONF, written into workdir."""
    conf = workdir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def base_image_exists(env: dict[str, str]) -> bool:
    return subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env, capture_output=True).returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses here (the only one reachable), from its sources."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.is_file():
            for match in re.finditer(r"(?:URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+/debian)/?\s", path.read_text(), re.M):
                return match.group(1)
    raise RuntimeError("no Debian mirror in /etc/apt/sources*: cannot debootstrap a base image")


def make_base_image(env: dict[str, str], workdir: Path) -> None:
    """A minimal Debian with python3 and venv, imported into podman's store (kept there for later runs)."""
    rootfs = workdir / "rootfs"
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv", SUITE, str(rootfs),
                    debian_mirror()], check=True, capture_output=True, timeout=1800)
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=env, check=True,
                       capture_output=True, timeout=600)
    if tar.returncode != 0:
        raise RuntimeError(f"tar of the debootstrap tree exited {tar.returncode}")


def failure(error: subprocess.CalledProcessError | subprocess.TimeoutExpired | OSError | RuntimeError) -> str:
    """One line for a failed step: the command's last line of output, or the error."""
    if isinstance(error, subprocess.CalledProcessError | subprocess.TimeoutExpired):
        output = error.stderr or error.stdout or b""
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        last = text.strip().splitlines()[-1:] or [""]
        return f"`{' '.join(map(str, error.cmd))[:80]}` failed: {last[0]}"
    return str(error)


def install_debs(packages: list[str]) -> None:
    subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, env=APT_ENV, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True,
                   capture_output=True, env=APT_ENV, timeout=1800)


def say(line: str) -> None:
    print(f"provision: {line}", flush=True)


def provision(install: bool) -> list[str]:
    """Bring what is missing (when install), then return one line per thing still missing."""
    problems: list[str] = []
    wanted = {**SLURM_PROGRAMS, **PODMAN_PROGRAMS, **CHARLIECLOUD_PROGRAMS, **PROVISION_PROGRAMS}

    missing = missing_programs(wanted)
    if missing and install:
        packages = sorted(set(missing.values()))
        say(f"apt-get install {' '.join(packages)}")
        try:
            install_debs(packages)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            problems.append(f"installing Debian packages: {failure(error)}")
        missing = missing_programs(wanted)
    for prog, pkg in missing.items():
        problems.append(f"missing {prog} (Debian package {pkg})")

    absent, wrong = hosts_problems()
    if absent and install:
        say(f"adding '{LOOPBACK} {' '.join(absent)}' to {HOSTS_FILE}")
        text = HOSTS_FILE.read_text() if HOSTS_FILE.exists() else ""
        separator = "\n" if text and not text.endswith("\n") else ""  # never glue onto a last line
        with HOSTS_FILE.open("a") as hosts:
            hosts.write(f"{separator}{LOOPBACK} {' '.join(absent)}\n")
        absent, wrong = hosts_problems()
    problems += [f"{HOSTS_FILE} lacks '{LOOPBACK} {name}'" for name in absent] + wrong

    if shutil.which("podman") is None:
        problems.append(f"podman image {BASE_IMAGE}: needs podman first")
        return problems
    with tempfile.TemporaryDirectory(prefix="gangrun-provision-", ignore_cleanup_errors=True) as tmp:
        env = podman_env(Path(tmp))
        if not base_image_exists(env):
            if install and shutil.which("debootstrap"):
                say(f"making podman image {BASE_IMAGE} with debootstrap (a few minutes, once per machine)")
                try:
                    make_base_image(env, Path(tmp))
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, RuntimeError) as error:
                    problems.append(f"making podman image {BASE_IMAGE}: {failure(error)}")
            if not base_image_exists(env):
                problems.append(f"missing podman image {BASE_IMAGE}")
    return problems


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report what is missing, change nothing")
    args = parser.parse_args(argv)
    start = time.monotonic()
    install = can_install() and not args.check
    problems = provision(install)
    for problem in problems:
        say(problem)
    if not problems:
        say(f"ready for the slurm and podman tests ({time.monotonic() - start:.1f} s)")
        return 0
    if os.environ.get("CI") == "true":
        say("CI=true: every real-engine test must run, so this is a failure")
        return 1
    if args.check:
        why = "run it without --check, as root, to install them"
    elif not install:
        why = "run it as root with apt-get to install them"
    else:
        why = "fix the above"
    say(f"the tests that need these will skip ({why})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
