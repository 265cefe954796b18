"""The Kubernetes engine: Indexed Job, JobSet, TrainJob or PyTorchJob objects, applied with kubectl."""

from __future__ import annotations

from collections.abc import Iterator

from launcher.build import DEFAULT_IMAGE
from launcher.engines.base import CORE_FIELDS
from launcher.engines.k8s import kubectl
from launcher.engines.k8s.checks import check_spec
from launcher.engines.k8s.options import K8sOptions
from launcher.engines.k8s.render import dump_yaml, render_objects
from launcher.errors import SpecError
from launcher.jobs import JobHandle
from launcher.spec import JobSpec
from launcher.verdict import render, render_line


class KubernetesEngine:
    name = "k8s"
    title = "Kubernetes"
    options = K8sOptions
    # No rdzv_endpoint: every pod meets rank 0's pod by its DNS name (the PET_* contract).
    reads = CORE_FIELDS | {"image", "gpus_per_node", "time", "mounts"}
    # The program is the image's: only the shipped one, the same here, is checked before a submission.
    program_is_here = False

    def validate(self, spec: JobSpec, options: K8sOptions) -> None:
        check_spec(spec, options)

    def render(self, spec: JobSpec, options: K8sOptions) -> str:
        # The CLI prints it with a newline of its own.
        return dump_yaml(render_objects(spec, options)).rstrip("\n")

    def submit(self, spec: JobSpec, options: K8sOptions) -> JobHandle:
        if spec.image is None:
            raise SpecError("image", "is not set, and a cluster's nodes cannot pull the local default "
                            f"{DEFAULT_IMAGE}", "push an image and pass --image REGISTRY/NAME:TAG")
        namespace = kubectl.apply(self.render(spec, options), options.namespace)
        handle = JobHandle(target=self.name, native_id=f"{namespace}.{spec.job_name}", name=spec.job_name,
                           extra={"kind": options.kind, "namespace": namespace})
        handle.save()
        return handle

    def status(self, handle: JobHandle) -> str:
        state = kubectl.status(handle)
        if state.startswith("Failed") and (verdict := kubectl.failed_verdict(handle)) is not None:
            return f"{state}\n{render(verdict)}"
        return f"{state}\n{kubectl.ranks(handle)}" if state.startswith("Running") else state

    def stacks(self, handle: JobHandle) -> str:
        return kubectl.stacks(handle)

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        yield from kubectl.logs(handle, follow, rank)
        # The pods' logs end where their containers did; why the job failed is in their status.
        if kubectl.status(handle).startswith("Failed") and (verdict := kubectl.failed_verdict(handle)) is not None:
            yield render_line(verdict)

    def cancel(self, handle: JobHandle) -> None:
        kubectl.cancel(handle)


ENGINE = KubernetesEngine()
