"""`gangrun`: parse flags, build a JobSpec, hand it to a target. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from launcher import __version__, build
from launcher.errors import EXIT_BAD_INPUT, SpecError
from launcher.profiles import build_spec, settable_fields
from launcher.jobs import list_handles, load_handle
from launcher.spec import Entrypoint, JobSpec, parse_env_pairs
from launcher.targets import CLUSTER_TARGETS, get_target, local

# Flags whose names differ from their field; the rest are the field name with dashes.
_FLAG_NAMES = {"slurm.signal_grace_s": "--signal-grace"}
_MAPPING_FLAGS = {"env": "--env", "k8s.node_selector": "--node-selector", "k8s.tolerations": "--toleration",
                  "k8s.secret_env": "--secret-env"}


def _flag_for(path: str) -> str:
    return _FLAG_NAMES.get(path) or _MAPPING_FLAGS.get(path) or "--" + path.split(".")[-1].replace("_", "-")


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("job spec (flags > GANGRUN_* variables > gangrun.toml > defaults)")
    group.add_argument("--profile", help="profile in gangrun.toml ([profile.NAME])")
    group.add_argument("--profile-file", type=Path, help="profile file (default ./gangrun.toml)")
    for path, hint in settable_fields().items():
        flag, dest = _flag_for(path), "spec:" + path
        if path in _MAPPING_FLAGS:
            group.add_argument(flag, dest=dest, action="append", metavar="KEY=VALUE", help=f"{path} entry")
        elif hint is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, help=path)
        else:
            group.add_argument(flag, dest=dest, metavar=path.split(".")[-1].upper(), help=path)
    parser.add_argument("-m", "--module", action="store_true",
                        help="run ENTRY as a Python module (python -m ENTRY), like torchrun -m")
    parser.add_argument("entry", metavar="ENTRY", help="script path, or module name with -m")
    parser.add_argument("entry_args", nargs=argparse.REMAINDER, help="arguments passed to ENTRY")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gangrun", description="Launch PyTorch DDP/FSDP training: locally under torchrun, on Slurm, or on Kubernetes.")
    parser.add_argument("--version", action="version", version=f"gangrun {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run locally under torchrun (one agent per node on this machine)")
    run.add_argument("--dry-run", action="store_true", help="print the exact commands and environment; run nothing")
    _add_spec_flags(run)
    render = sub.add_parser("render", help="print what a target would run or submit, offline")
    render.add_argument("--target", choices=["local", *CLUSTER_TARGETS], default="local")
    _add_spec_flags(render)
    submit = sub.add_parser("submit", help="submit to a cluster target")
    submit.add_argument("--target", choices=list(CLUSTER_TARGETS), required=True)
    submit.add_argument("--dry-run", action="store_true", help="print what would be submitted; submit nothing")
    _add_spec_flags(submit)
    for name, text in (("status", "state of a submitted job"), ("cancel", "cancel a submitted job")):
        sub.add_parser(name, help=text).add_argument("job", metavar="JOB", help="job id from submit or list")
    logs = sub.add_parser("logs", help="a submitted job's output, rank-prefixed")
    logs.add_argument("job", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--rank", type=int, help="only this global rank's lines")
    sub.add_parser("list", help="jobs submitted from this machine")
    build.add_arguments(sub.add_parser("build", help="build the training image from docker/Dockerfile"))
    return parser


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    flags: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("spec:") and value is not None:
            path = key[len("spec:"):]
            flags[path] = parse_env_pairs(value) if path in _MAPPING_FLAGS else value
    entry = Entrypoint(args.entry, is_module=args.module, args=tuple(args.entry_args))
    return build_spec(entry, flags, profile=args.profile, profile_file=args.profile_file)


def render_local_text(spec: JobSpec) -> str:
    commands = local.render_local(spec, port=29500, run_id=f"{spec.job_name}-RUNID")
    lines = [f"# gangrun run: {len(commands)} node agent(s) on this machine; "
             "port 29500 and RUNID are picked fresh at run time"]
    lines += [cmd.shell_line() for cmd in commands]
    return "\n".join(lines)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "build":
        return build.run_build(args)
    if args.command == "list":
        for handle in list_handles():
            print(f"{handle.id}\t{handle.name}\t{handle.folder}")
        return 0
    if args.command in ("status", "logs", "cancel"):
        handle = load_handle(args.job)
        target = get_target(handle.target)
        if args.command == "status":
            print(target.status(handle))
        elif args.command == "cancel":
            target.cancel(handle)
        else:
            for line in target.logs(handle, follow=args.follow, rank=args.rank):
                print(line, flush=True)
        return 0
    spec = spec_from_args(args)
    target_name = getattr(args, "target", "local")
    if target_name == "local":
        if args.command == "render" or args.dry_run:
            print(render_local_text(spec))
            return 0
        return local.run_local(spec)
    target = get_target(target_name)
    if args.command == "render" or args.dry_run:
        print(target.render(spec))
        return 0
    handle = target.submit(spec)
    print(f"gangrun: submitted {handle.id} ({handle.name}); folder {handle.folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except SpecError as err:
        print(f"gangrun: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
