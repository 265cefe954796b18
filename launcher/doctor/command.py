"""`gangrun doctor`: every check for a target, this node's and, inside a Slurm allocation, every node's."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from launcher import __version__, cli
from launcher.contract import EXIT_OK
from launcher.doctor import checks, cluster, probes
from launcher.doctor.cheap import NodeLayout, gpu_check, in_slurm_allocation, shm_check, topology_checks
from launcher.doctor.checks import check_same_everywhere
from launcher.doctor.result import Check, exit_code, fail, ok, warn
from launcher.engines.slurm.script import PORT_BASE, PORT_SPAN
from launcher.errors import SpecError
from launcher.preflight import program_facts as facts_of
from launcher.profiles import resolve
from launcher.spec import Entrypoint, JobSpec

DESCRIPTION = "check this machine (and a Slurm allocation's nodes) against a job spec, each finding with its fix"
# Doctor needs no ENTRY; the spec it checks then runs this placeholder, which nothing starts.
NO_ENTRY = Entrypoint("doctor", is_module=True)
SHARED_FIX = "put it on a filesystem every node mounts at the same path (NFS, Lustre), or use an s3:// URL"


def add_doctor_arguments(parser: argparse.ArgumentParser, target: str | None = None) -> None:
    """render's flags (--target and the target's spec flags), ENTRY optional, and --checkpoint."""
    cli.add_command_arguments(parser, "render", target)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="URL",
                        help="a folder or fsspec URL (s3://...) the job writes checkpoints to, checked for space "
                             "and a write; repeatable (default: what the program's check mode names)")


def doctor_help(target: str | None) -> str:
    parser = argparse.ArgumentParser(prog="gangrun doctor", description=DESCRIPTION, add_help=False,
                                     allow_abbrev=False)
    add_doctor_arguments(parser, target)
    return parser.format_help()


@dataclass(frozen=True)
class Where:
    """Which node doctor runs on, for the target: a training node here, and how many share the allocation."""

    target: str
    environ: Mapping[str, str]

    @property
    def allocation(self) -> bool:
        return self.target == "slurm" and in_slurm_allocation(self.environ)

    @property
    def training_node(self) -> bool:
        """Whether the job's workers run on this machine (local), or doctor runs inside the allocation."""
        return self.target == "local" or self.allocation

    @property
    def nodes(self) -> int:
        count = self.environ.get("SLURM_NNODES", "1")
        return int(count) if self.allocation and count.isdigit() else 1


def rendezvous(spec: JobSpec, where: Where) -> tuple[NodeLayout, list[Check]]:
    """The layout the job's agents get here, and what the rendezvous host and port look like from this node."""
    if spec.rdzv_endpoint is not None:
        host, _, port_text = spec.rdzv_endpoint.rpartition(":")
        host, port = host.strip("[]"), int(port_text)
    elif where.allocation:
        first, error = cluster.first_host(where.environ.get("SLURM_JOB_NODELIST", ""))
        if first is None:
            return _layout(spec, None, None), [fail("rdzv_endpoint", f"no first host in SLURM_JOB_NODELIST ({error})",
                                                    "run doctor inside the job's allocation, where scontrol works")]
        # The batch script's own rule (launcher.engines.slurm.script.RDZV_PORT_LINE).
        host, port = first, PORT_BASE + int(where.environ["SLURM_JOB_ID"]) % PORT_SPAN
    else:
        told = {"local": "a free loopback port is picked at run time",
                "slurm": "the allocation's first host, known once it runs: run doctor inside one "
                         "(srun --nodes N gangrun doctor --target slurm ...) to check it",
                "k8s": "pod 0's DNS name, resolvable inside the cluster only"}
        return _layout(spec, None, None), [ok("rdzv_endpoint", told.get(where.target, "decided at run time"))]
    layout = _layout(spec, host, port)
    addresses, error = probes.resolve(host)
    found = [checks.check_resolves(host, addresses, error)]
    if addresses:
        if probes.is_local(addresses):
            # This machine hosts the store: reachable by definition, and its port must be free.
            found.append(checks.check_port_free(host, port, probes.bind_error(port)))
        else:
            found.append(checks.check_reachable(host, port, probes.reach(addresses[0], port)))
    return layout, found


def _layout(spec: JobSpec, host: str | None, port: int | None) -> NodeLayout:
    return NodeLayout(host, port, spec.nnodes, spec.nproc_per_node, spec.gpus_per_node)


def program_facts(spec: JobSpec, has_entry: bool) -> tuple[list[str], int, list[Check]]:
    """(locations the program writes, its DataLoader workers, what asking it found), from its check mode."""
    if not has_entry:
        return [], 0, []
    try:
        facts = facts_of(spec)
    except SpecError as err:
        return [], 0, [fail("program", f"the program refuses its input: {err}", "fix the arguments after ENTRY")]
    if facts is None:
        return [], 0, [warn("program", f"{spec.entrypoint.target} has no check mode, so its folders are unknown",
                            "name them with --checkpoint URL")]
    writes, workers = list(facts.writes), facts.dataloader_workers
    return writes, workers, [ok("program", f"writes {', '.join(writes) or 'nothing'}; "
                                            f"{workers} DataLoader worker(s) per process")]


def every_node_checks(python: str, locations: list[str], nodes: int) -> list[Check]:
    """Inside a multi-node allocation: the same folders and the same versions on every node (one srun)."""
    folders = [loc for loc in locations if not probes.is_url(loc)]
    tokens = {loc: token for loc in folders if (token := probes.write_token(loc)) is not None}
    try:
        reports, error = cluster.every_node(python, [path for path, _ in tokens.values()], nodes)
    finally:
        for path, _ in tokens.values():
            path.unlink(missing_ok=True)
    if error is not None:
        return [fail("nodes", f"srun on every node failed ({error})",
                     "check `srun --nodes N hostname` works in this allocation")]
    if len(reports) != nodes:
        return [fail("nodes", f"{len(reports)} of the allocation's {nodes} nodes answered srun",
                     "check `sinfo` that every node is up")]
    found = []
    for loc, (path, written) in tokens.items():
        seen = {r.host: "the same folder" if r.tokens.get(str(path)) == written else "another folder"
                for r in reports}
        found.append(check_same_everywhere("checkpoint", loc, seen, SHARED_FIX))
    versions = {r.host: f"torch {r.torch}, gangrun {r.gangrun}" for r in reports}
    found.append(check_same_everywhere("versions", "torch and gangrun", versions,
                                       "install the same image or environment on every node"))
    return found


def doctor_checks(target: str, spec: JobSpec, options: Any, checkpoints: list[str], has_entry: bool,
                  environ: Mapping[str, str] = os.environ) -> list[Check]:
    """Every check for ``target``, in the order a user reads them."""
    where = Where(target, environ)
    layout, found = rendezvous(spec, where)
    if where.allocation:
        found += topology_checks(layout, environ)
    writes, workers, asked = program_facts(spec, has_entry)
    found += asked
    if where.training_node:
        counted = cluster.nvidia_smi_gpus() if "CUDA_VISIBLE_DEVICES" not in environ else None
        found += [gpu_check(layout, environ, counted), shm_check(layout, environ, workers)]
    locations = list(dict.fromkeys([*checkpoints, *writes]))
    for loc in locations:
        probe = probes.probe_location(loc)
        found.append(checks.check_location(loc, probe.free, probe.error))
    if where.nodes > 1:
        python = getattr(options, "python", None) or sys.executable
        found += every_node_checks(python, locations, where.nodes)
    else:
        found.append(ok("versions", f"torch {metadata.version('torch')}, gangrun {__version__} on this node"
                        + (" (run doctor inside the allocation to compare every node's)" if target == "slurm" else "")))
    if target != "k8s":
        found.append(checks.check_interfaces(probes.ipv4_interfaces(), {**environ, **spec.env}))
    else:
        kubectl = cluster.which("kubectl")
        found += [checks.check_image(spec.image),
                  checks.check_kubectl(kubectl, cluster.kubectl_cluster_error(kubectl) if kubectl else None)]
    return found


def run_doctor(args: argparse.Namespace) -> int:
    """Print one line per check and a summary; 0 when none failed, 1 when any did (bad flags stay 2)."""
    if args.help:
        print(doctor_help(args.target), end="")
        return EXIT_OK
    target = cli.target_of(args)
    flags = cli.given_flags(args)
    cli.reject_foreign_flags(args.command, target, flags)
    has_entry = args.entry is not None
    entry = Entrypoint(args.entry, is_module=args.module, args=tuple(args.entry_args)) if has_entry else NO_ENTRY
    spec, options = resolve(entry, target, flags, profile=args.profile, profile_file=args.profile_file)
    found = doctor_checks(target, spec, options, list(args.checkpoint),
                          has_entry)
    for check in found:
        print(check.line(), flush=True)
    counts = {status: sum(1 for c in found if c.status == status) for status in ("ok", "warn", "fail")}
    print(f"gangrun doctor ({target}): " + ", ".join(f"{n} {status}" for status, n in counts.items()))
    return exit_code(found)
