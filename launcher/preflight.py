"""Before anything starts, is submitted or rendered: the program can be found, and its check mode accepts its input.

The check mode is the contract in launcher/contract.py (CHECK_ENV): the program runs once, here, as a
subprocess (the launcher never imports it), with the job's own arguments and environment. ``-m train``
honours it; a user's program opts in with ``--program-check``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.contract import (
    CHECK_ENV,
    CHECK_REPORT_KEY,
    CHECK_WORLD_SIZES_ENV,
    EXIT_BAD_INPUT,
    EXIT_OK,
    SAFE_PATH_FLAG,
    SHIPPED_PROGRAM,
)
from launcher.errors import SpecError
from launcher.spec import JobSpec

# A check reads a config and looks at folders; one that takes longer than this has started the work.
CHECK_TIMEOUT_S = 60
# "train: error: " and the like: the program's own prefix, dropped where gangrun says whose line it is.
_OWN_PREFIX = re.compile(r"^[\w .-]*: error: ")

# Run by the interpreter the workers use, on the sys.path they get: exit 0 when the module is found.
_FIND_MODULE = """\
import importlib.util, sys
try:
    found = importlib.util.find_spec(sys.argv[1]) is not None
except (ImportError, ValueError):
    found = False
sys.exit(0 if found else 1)
"""


# Below this much free space a folder counts as full: not even a checkpoint's metadata would fit.
MIN_FREE_BYTES = 1 << 20


@dataclass(frozen=True)
class ProgramFacts:
    """What a program's check mode reports: the folders or URLs it will write, its DataLoader workers.

    ``names[i]`` is what sets ``writes[i]`` in the program's input (``checkpoint.dir``), for errors.
    """

    writes: tuple[str, ...] = ()
    dataloader_workers: int = 0
    names: tuple[str, ...] = ()


def _program_argv(spec: JobSpec, python: str) -> list[str]:
    """How the workers will start the program (the shipped one with Python's safe path, as the agent does)."""
    entry = spec.entrypoint
    flags = [SAFE_PATH_FLAG] if entry.is_module and entry.target == SHIPPED_PROGRAM else []
    return [python, *flags, *entry.argv()]


def check_entrypoint(spec: JobSpec, python: str = sys.executable) -> None:
    """Fail when the script or module cannot be found from here, where `gangrun` was started.

    A module is looked for as the workers will look: from the working directory for a user's own,
    with the safe path for the shipped program (launcher.agent.main.protect_shipped_program).
    """
    entry = spec.entrypoint
    if not entry.is_module:
        if not Path(entry.target).is_file():
            raise SpecError("entrypoint", f"script '{entry.target}' does not exist here ({os.getcwd()})",
                            "check the path; it is read from the same path on every node")
        return
    flags = [SAFE_PATH_FLAG] if entry.target == SHIPPED_PROGRAM else []
    found = subprocess.run([python, *flags, "-c", _FIND_MODULE, entry.target], env={**os.environ, **spec.env},
                           capture_output=True).returncode == 0
    if not found:
        raise SpecError("entrypoint", f"module '{entry.target}' is not importable",
                        "install it or check the name after -m")


def checks_program(spec: JobSpec) -> bool:
    """Whether the program is run in check mode first: ``-m train`` always, a user's program when it opts in."""
    if spec.program_check is not None:
        return spec.program_check
    return spec.entrypoint.is_module and spec.entrypoint.target == SHIPPED_PROGRAM


def world_sizes(spec: JobSpec) -> list[int]:
    """Every world size the job may run at (each node count of an elastic range); none when nproc is auto."""
    if not isinstance(spec.nproc_per_node, int):
        return []
    return [nodes * spec.nproc_per_node for nodes in range(spec.nnodes.min, spec.nnodes.max + 1)]


def parse_report(stdout: str) -> ProgramFacts:
    """The check's JSON report (its last stdout line with the report key); empty facts when there is none."""
    for line in reversed(stdout.splitlines()):
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if isinstance(report, dict) and report.get(CHECK_REPORT_KEY) == 1:
            writes = report.get("writes", {})
            # A list of locations, or a table of them under the keys that set them.
            named = writes if isinstance(writes, dict) else {str(w): w for w in writes} if isinstance(
                writes, list) else {}
            workers = report.get("dataloader_workers", 0)
            return ProgramFacts(tuple(str(w) for w in named.values()), workers if isinstance(workers, int) else 0,
                                tuple(str(k) for k in named))
    return ProgramFacts()


def local_folder(location: str) -> Path | None:
    """The local folder behind a path or file:// URL; None for a remote URL (`gangrun doctor` probes those)."""
    if location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    return None if "://" in location else Path(location)


def nearest_existing(path: Path) -> Path:
    """The folder itself or, when the program has yet to make it, the ancestor it will be made in."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def unwritable(folder: Path) -> str | None:
    """Why ``folder`` (made if missing, by whoever writes first) cannot be written, or None when it can.

    Only looked at, never written: a check leaves nothing behind.
    """
    existing = nearest_existing(folder.absolute())
    if not existing.is_dir():
        return f"'{existing}' is a file, not a folder"
    stat = os.statvfs(existing)
    if stat.f_flag & os.ST_RDONLY:
        return f"'{existing}' is on a read-only filesystem"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"'{existing}' is not writable by this user"
    free = stat.f_bavail * stat.f_frsize
    if free < MIN_FREE_BYTES:
        return f"'{existing}' is full ({free // 1024} KiB free)"
    return None


def check_writable(facts: ProgramFacts) -> None:
    """SpecError, naming the key that set it, for the first local folder the program could not write."""
    for name, location in zip(facts.names, facts.writes, strict=True):
        folder = local_folder(location)
        problem = unwritable(folder) if folder is not None else None
        if problem is not None:
            raise SpecError(name, problem, f"point {name} at a folder this job can write, or free some space")


def refusal_line(stderr: str) -> str:
    """The program's last stderr line, without its own ``NAME: error:`` prefix."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return _OWN_PREFIX.sub("", lines[-1]) if lines else "no message"


def program_facts(spec: JobSpec, python: str = sys.executable) -> ProgramFacts | None:
    """Run the program's check mode: its facts, None when it has none, SpecError (exit 2) when it refuses."""
    if not checks_program(spec):
        return None
    env = {**os.environ, **spec.env, CHECK_ENV: "1", "RANK": "0", "LOCAL_RANK": "0"}
    sizes = world_sizes(spec)
    if sizes:
        env[CHECK_WORLD_SIZES_ENV] = ",".join(map(str, sizes))
    who = " ".join(spec.entrypoint.argv()[:2] if spec.entrypoint.is_module else spec.entrypoint.argv()[:1])
    try:
        done = subprocess.run(_program_argv(spec, python), env=env, capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SpecError(who, f"its check mode ({CHECK_ENV}=1) did not end within {CHECK_TIMEOUT_S} s",
                        "make the check return at once, or run with --no-program-check") from None
    if done.returncode == EXIT_OK:
        return parse_report(done.stdout)
    if done.returncode == EXIT_BAD_INPUT:
        raise SpecError(who, f"refused its input: {refusal_line(done.stderr)}",
                        "nothing was started or submitted")
    raise SpecError(who, f"its check mode exited {done.returncode}: {refusal_line(done.stderr)}",
                    "fix the program, or run with --no-program-check")


def preflight(spec: JobSpec, program_is_here: bool, python: str = sys.executable) -> ProgramFacts | None:
    """Everything checked here before a run, a submission or a rendering: the entrypoint, then its input.

    A program that lives in an image (``program_is_here`` False) is checked only when it is the
    shipped one, which is the same here, or when the user asks for its check mode.
    """
    shipped = spec.entrypoint.is_module and spec.entrypoint.target == SHIPPED_PROGRAM
    if not (program_is_here or shipped or spec.program_check):
        return None
    check_entrypoint(spec, python)
    facts = program_facts(spec, python)
    if facts is not None and program_is_here:
        check_writable(facts)
    return facts
