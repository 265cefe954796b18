"""Each node's agent inside ``--image`` on Slurm: pyxis, Apptainer, Charliecloud or podman, rendered exactly.

The agent runs inside the container with the same contract as in a Kubernetes pod (the agent, its
exit codes, the progress protocol, the job's environment). The job folder (logs, status, verdicts)
and the working directory sbatch runs in are bound at the same paths on every node, with every
``--mount``, so relative paths and the status folder mean the same inside and out.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from launcher.errors import SpecError
from launcher.images import check_oci_reference, is_oci_reference
from launcher.spec import JobSpec, Mount

RUNTIMES = ("pyxis", "apptainer", "charliecloud", "podman")
# What the agent and `gangrun doctor` read of the allocation; podman passes only what it is told.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NODEID",
              "SLURM_PROCID", "SLURM_RESTART_COUNT", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
              "SLURM_GPUS_ON_NODE")
# enroot's own form for pyxis: REGISTRY#IMAGE (e.g. nvcr.io#nvidia/pytorch:24.01-py3).
_ENROOT_URI = re.compile(r"^(?P<registry>[A-Za-z0-9.-]+(?::\d+)?)#(?P<image>.+)$")


def _path_image(image: str, suffixes: tuple[str, ...], runtime: str, fix: str) -> None:
    if not image.startswith("/") or (suffixes and not image.endswith(suffixes)):
        raise SpecError("image", f"'{image}' is not what {runtime} runs", fix)


def check_image(runtime: str, image: str) -> None:
    """SpecError (field ``image``) for a value ``runtime`` cannot run."""
    if runtime == "podman":
        check_oci_reference(image)
    elif runtime == "pyxis":
        enroot = _ENROOT_URI.match(image)
        if image.startswith("/"):
            _path_image(image, (".sqsh", ".squashfs"), runtime, "use an image reference or an enroot .sqsh file")
        elif not is_oci_reference(enroot.group("image") if enroot else image):
            check_oci_reference(image)
    elif runtime == "apptainer":
        if image.startswith("docker://"):
            check_oci_reference(image.removeprefix("docker://"))
        else:
            _path_image(image, (".sif",), runtime, "use an absolute .sif path or docker://REFERENCE")
    else:
        _path_image(image, (), runtime, "use the absolute path of a ch-convert directory or .sqfs image")


def check_container(spec: JobSpec, runtime: str | None) -> None:
    """--image, --mount and --container-runtime together, or not at all: never an image silently ignored."""
    if runtime is None:
        if spec.image is not None:
            raise SpecError("image", "is not run on Slurm without a container runtime",
                            f"add --container-runtime {'|'.join(RUNTIMES)}, or drop --image to run on bare metal")
        if spec.mounts:
            raise SpecError("mount", "binds folders into a container, and this job runs on bare metal",
                            "add --image and --container-runtime, or drop --mount")
        return
    if runtime not in RUNTIMES:
        raise SpecError("slurm.container_runtime", f"'{runtime}' is not a runtime gangrun renders",
                        f"use one of: {', '.join(RUNTIMES)}")
    if spec.image is None:
        raise SpecError("image", f"is needed by --container-runtime {runtime}", "add --image IMAGE")
    check_image(runtime, spec.image)


def srun_flags(runtime: str, spec: JobSpec, mounts: list[Mount], workdir: Path) -> list[str]:
    """pyxis's srun flags; --container-name lets a requeued job on the same node reuse the unpacked image."""
    if runtime != "pyxis":
        return []
    assert spec.image is not None  # check_container
    return [f"--container-image={spec.image}", "--container-mounts=" + ",".join(map(str, mounts)),
            f"--container-workdir={workdir}", f"--container-name=gangrun-{spec.job_name}"]


def wrapper(runtime: str, spec: JobSpec, mounts: list[Mount], workdir: Path, env_keys: list[str]) -> list[str]:
    """The words between srun's and the agent's: the runtime that starts the agent in the image."""
    assert spec.image is not None  # check_container
    gpus = spec.gpus_per_node > 0
    if runtime == "apptainer":
        return ["apptainer", "exec", *(["--nv"] if gpus else []), "--bind", ",".join(map(str, mounts)),
                "--pwd", str(workdir), spec.image]
    if runtime == "charliecloud":
        binds_ = [word for m in mounts for word in ("-b", f"{m.source}:{m.target}")]
        return ["ch-run", "--set-env", *binds_, "--cd", str(workdir), spec.image, "--"]
    if runtime == "podman":
        volumes = [word for m in mounts for word in ("-v", str(m))]
        env = [word for key in (*env_keys, *SLURM_VARS) for word in ("--env", key)]
        return ["podman", "run", "--rm", "--network", "host", "--ipc", "host",
                *(["--device", "nvidia.com/gpu=all"] if gpus else []), *volumes, "-w", str(workdir), *env,
                spec.image]
    return []


def setup_lines(runtime: str | None) -> list[str]:
    """Lines the batch script runs before srun for ``runtime``."""
    if runtime == "charliecloud":
        # ch-run refuses to start without $USER, which a batch job's environment may lack.
        return ['export USER="${USER:-$(id -un)}"']
    return []


def quoted(words: list[str]) -> list[str]:
    return [shlex.quote(word) for word in words]
