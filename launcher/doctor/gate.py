"""Before `gangrun run` starts an agent: the cheap checks plus the port, a failure is bad input (exit 2)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from launcher.doctor import checks, probes
from launcher.doctor.cheap import NodeLayout, cheap_checks
from launcher.doctor.result import Check, first_failure
from launcher.errors import SpecError
from launcher.spec import JobSpec


def spec_layout(spec: JobSpec) -> NodeLayout:
    """The layout a spec asks for; no endpoint means a free loopback port picked at run time."""
    if spec.rdzv_endpoint is None:
        return NodeLayout(None, None, spec.nnodes, spec.nproc_per_node, spec.gpus_per_node)
    host, _, port = spec.rdzv_endpoint.rpartition(":")
    return NodeLayout(host.strip("[]"), int(port), spec.nnodes, spec.nproc_per_node, spec.gpus_per_node)


def port_check(layout: NodeLayout) -> Check | None:
    """Whether the store's port is free, where this machine hosts it (None: not this machine's to check)."""
    if layout.host is None or layout.port is None:
        return None
    addresses, _ = probes.resolve(layout.host)
    if not addresses or not probes.is_local(addresses):
        return None
    return checks.check_port_free(layout.host, layout.port, probes.bind_error(layout.port))


def run_checks(spec: JobSpec, environ: Mapping[str, str] = os.environ) -> list[Check]:
    """What `gangrun run` checks: every node runs here, so the allocation it may sit in does not apply."""
    layout = spec_layout(spec)
    found = cheap_checks(layout, environ, slurm_topology=False)
    port = port_check(layout)
    return [*found, port] if port is not None else found


def check_before_run(spec: JobSpec) -> None:
    """Warnings to stderr; the first failure raises SpecError (one line, exit 2) with nothing started."""
    found = run_checks(spec)
    for check in found:
        if check.status == "warn":
            print(check.preflight_line(), file=sys.stderr, flush=True)
    failed = first_failure(found)
    if failed is not None:
        raise SpecError(failed.name, failed.detail, failed.fix)
