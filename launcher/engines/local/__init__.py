"""The local engine: one torchrun agent per node on this machine (`gangrun run`)."""

from __future__ import annotations

from launcher.engines.base import CORE_FIELDS
from launcher.engines.local.options import LocalOptions
from launcher.engines.local.render import render_text
from launcher.engines.local.run import run_local
from launcher.spec import JobSpec


class LocalEngine:
    name = "local"
    title = "local"
    options = LocalOptions
    reads = CORE_FIELDS | {"rdzv_endpoint"}

    def validate(self, spec: JobSpec, options: LocalOptions) -> None:
        options.validate(spec)

    def render(self, spec: JobSpec, options: LocalOptions) -> str:
        return render_text(spec)

    def run(self, spec: JobSpec, options: LocalOptions) -> int:
        return run_local(spec, options)


ENGINE = LocalEngine()
