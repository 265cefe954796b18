"""`gangrun run --image`: each node's agent in its own container (podman, or docker where its engine runs).

The nodes meet over the host network, as a Kubernetes job's pods meet over theirs, with the same
environment contract, log prefixes and exit codes. The run's folder, the working directory and every
``--mount`` are bound at their own paths; the container runs as the calling user, so what it writes
there is the user's. The engine hands the stop signals to the agent, which passes the preemption
notice on to its workers (they do not share the caller's process group).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from launcher.errors import SpecError
from launcher.images import check_oci_reference
from launcher.spec import JobSpec, bind_mounts

ENGINES = ("podman", "docker")


def container_engine(which: Callable[[str], str | None] = shutil.which) -> str:
    """podman, else docker: the first on PATH, or SpecError (the image cannot run here)."""
    for engine in ENGINES:
        if which(engine):
            return engine
    raise SpecError("image", "needs podman or docker on PATH to run locally", "install podman, or drop --image")


def check_local_image(spec: JobSpec) -> None:
    if spec.image is not None:
        check_oci_reference(spec.image)
    elif spec.mounts:
        raise SpecError("mount", "binds folders into a container, and this run has no --image",
                        "add --image, or drop --mount")


def container_prefix(engine: str, spec: JobSpec, name: str, folders: list[str], workdir: str,
                     env_keys: list[str], user: str) -> list[str]:
    """The words before the agent's: ``podman run ... IMAGE``; the agent's env is passed by name."""
    assert spec.image is not None  # check_local_image
    volumes = [word for m in bind_mounts([*folders, workdir], spec.mounts) for word in ("-v", str(m))]
    env = [word for key in env_keys for word in ("--env", key)]
    # --pid host: torchrun's c10d rendezvous tells nodes apart by host name and pid, and every container
    # on this machine has the host's name and, in a pid namespace of its own, the same pid for its agent:
    # two nodes looked like one and the rendezvous waited for the second forever (seen with podman 4.3).
    return [engine, "run", "--rm", "--name", name, "--network", "host", "--ipc", "host", "--pid", "host",
            "--user", user, *volumes, "-w", workdir, *env, spec.image]
