"""The local engine: one torchrun agent per node on this machine (`gangrun run`)."""

from __future__ import annotations

from collections.abc import Iterator

from launcher.engines.base import CORE_FIELDS
from launcher.engines.local import jobs
from launcher.engines.local.container import check_local_image
from launcher.engines.local.options import LocalOptions
from launcher.engines.local.render import container_run, render_text
from launcher.engines.local.run import run_local
from launcher.jobs import JobHandle
from launcher.spec import JobSpec


class LocalEngine:
    name = "local"
    title = "local"
    options = LocalOptions
    reads = CORE_FIELDS | {"rdzv_endpoint", "image", "mounts"}
    program_is_here = True

    def validate(self, spec: JobSpec, options: LocalOptions) -> None:
        options.validate(spec)
        check_local_image(spec)

    def render(self, spec: JobSpec, options: LocalOptions) -> str:
        return render_text(spec, options.stop_grace_s, container_run(spec))

    def run(self, spec: JobSpec, options: LocalOptions) -> int:
        return run_local(spec, options)

    def status(self, handle: JobHandle) -> str:
        return jobs.status(handle)

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        return jobs.logs(handle, follow, rank)

    def stacks(self, handle: JobHandle) -> str:
        return jobs.stacks(handle)

    def cancel(self, handle: JobHandle) -> None:
        jobs.cancel(handle)


ENGINE = LocalEngine()
