"""`gangrun`: parse flags, resolve the job, hand it to an engine. Nothing else lives here.

Every flag comes from a field declared with launcher.options.option, and exists only where it means
something: `run` takes what a local run reads, `submit|render --target X` the common spec plus X's
options. A flag of another target is a one-line error (exit 2), never silently ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Protocol

from launcher import __version__, build
from launcher.contract import EXIT_BAD_INPUT, EXIT_OK
from launcher.doctor.gate import check_before_run
from launcher.engines import ENGINES, cluster_engine, cluster_engines, job_engine
from launcher.engines.local import ENGINE as LOCAL
from launcher.errors import SpecError
from launcher.jobs import list_handles, load_handle
from launcher.options import Option, options_of
from launcher.preflight import preflight
from launcher.profiles import all_options, resolve, setting_sources
from launcher.spec import Entrypoint, JobSpec, parse_env_pairs
from launcher.timeouts import timeouts_line

_DEST = "opt:"
SPEC_COMMANDS = {
    "run": "run locally: one torchrun agent per node on this machine",
    "render": "print exactly what a target would run or submit, offline",
    "submit": "submit to a cluster engine",
}


def _targets(command: str) -> list[str]:
    if command == "run":
        return [LOCAL.name]
    if command == "submit":
        return list(cluster_engines())
    return list(ENGINES)


def _readers(path: str) -> list[str]:
    """The engines that read a common JobSpec field."""
    return [name for name, engine in ENGINES.items() if path in engine.reads]


class _Arguments(Protocol):
    """An argparse parser or argument group (the group's own class is private to argparse)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def _add_option(group: _Arguments, opt: Option, shown: bool, note: str = "") -> None:
    help_text = opt.help_line() + note if shown else argparse.SUPPRESS
    dest = _DEST + opt.path
    if opt.is_mapping or opt.is_list:
        group.add_argument(opt.flag, dest=dest, action="append", metavar=opt.meta.metavar or "KEY=VALUE",
                           help=help_text)
    elif opt.is_bool:
        group.add_argument(opt.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    else:
        group.add_argument(opt.flag, dest=dest, metavar=opt.meta.metavar or opt.name.upper(), help=help_text)


def add_command_arguments(parser: argparse.ArgumentParser, command: str, target: str | None) -> None:
    """Every flag of a spec command; those ``target`` does not read are hidden from help, but parsed,
    so that using one is a clear error (see reject_foreign_flags). ``target=None`` shows them all."""
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    targets = _targets(command)
    if command == "render":
        parser.add_argument("--target", choices=targets, default=LOCAL.name,
                            help=f"the engine to render for (default: {LOCAL.name})")
    elif command == "submit":
        parser.add_argument("--target", choices=targets, help="the cluster engine to submit to (required)")
    if command in ("run", "submit"):
        parser.add_argument("--dry-run", action="store_true", help="print what would run or be submitted; do nothing")
    common = parser.add_argument_group("job spec (flags > GANGRUN_* variables > gangrun.toml > defaults)")
    common.add_argument("--profile", help="the [profile.NAME] table of gangrun.toml to apply (default: none)")
    common.add_argument("--profile-file", type=Path, metavar="PATH",
                        help="the profile file (default: ./gangrun.toml, or $GANGRUN_CONFIG)")
    for opt in options_of(JobSpec):
        readers = _readers(opt.path)
        shown = target in readers if target else any(t in readers for t in targets)
        note = f" [{', '.join(readers)}]" if target is None and set(targets) - set(readers) else ""
        _add_option(common, opt, shown, note)
    for name, engine in ENGINES.items():
        group = parser.add_argument_group(f"{engine.title} options" + (f" (--target {name})" if command != "run"
                                                                         else ""))
        for opt in options_of(engine.options, section=name):
            _add_option(group, opt, shown=(target or name) == name and name in targets)
    parser.add_argument("-m", "--module", action="store_true",
                        help="run ENTRY as a Python module (python -m ENTRY), as torchrun -m does")
    parser.add_argument("entry", metavar="ENTRY", nargs="?", help="script path, or module name with -m")
    parser.add_argument("entry_args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments passed to ENTRY")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gangrun", description="Launch PyTorch DDP/FSDP training: locally under torchrun, on Slurm, or on "
                                    "Kubernetes. `gangrun COMMAND --help` explains each command's flags.")
    parser.add_argument("--version", action="version", version=f"gangrun {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command, text in SPEC_COMMANDS.items():
        add_command_arguments(sub.add_parser(command, help=text, add_help=False, allow_abbrev=False), command,
                              LOCAL.name if command == "run" else None)
    for name, text in (("status", "a job's state, and each rank's step, phase and step times while it runs"),
                       ("stacks", "every rank's Python stack, now, from a running job"),
                       ("cancel", "cancel a job (a local run: SIGTERM, so it saves and exits 75)")):
        sub.add_parser(name, help=text).add_argument("job", metavar="JOB", help="job id from run, submit or list")
    logs = sub.add_parser("logs", help="a job's output, rank-prefixed (a local run's console too)")
    logs.add_argument("job", metavar="JOB", help="job id from submit or list")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--rank", type=int, help="only this global rank's lines (default: every line)")
    sub.add_parser("list", help="jobs run or submitted from this machine")
    # Imported here, not at the top: launcher.doctor.command builds its spec with this module's helpers.
    from launcher.doctor.command import DESCRIPTION, add_doctor_arguments

    add_doctor_arguments(sub.add_parser("doctor", help=DESCRIPTION, add_help=False, allow_abbrev=False))
    build.add_arguments(sub.add_parser("build", help="build the training image from docker/Dockerfile"))
    return parser


def command_help(command: str, target: str | None) -> str:
    """`gangrun COMMAND [--target X] --help`: only the flags that command and target read."""
    others = "" if command == "run" else f"each target's own flags: gangrun {command} --target TARGET --help"
    parser = argparse.ArgumentParser(prog=f"gangrun {command}", description=SPEC_COMMANDS[command], add_help=False,
                                     allow_abbrev=False, epilog=others or None)
    add_command_arguments(parser, command, target)
    return parser.format_help()


def target_of(args: argparse.Namespace) -> str:
    if args.command == "run":
        return LOCAL.name
    if args.target is None:
        raise SpecError("--target", "submit needs a cluster engine",
                        f"use --target {' or --target '.join(cluster_engines())}")
    return str(args.target)


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Option paths the command line set, mapping flags turned into tables."""
    options = all_options()
    flags: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(_DEST) and value is not None:
            path = key[len(_DEST):]
            flags[path] = parse_env_pairs(value, path) if options[path].is_mapping else value
    return flags


def reject_foreign_flags(command: str, target: str, flags: dict[str, Any]) -> None:
    """A flag the target does not read stops here, naming the flag and the target it belongs to."""
    where = "`gangrun run` (a local run)" if command == "run" else f"--target {target}"
    options = all_options()
    for path in flags:
        flag = options[path].flag
        section, _, _ = path.rpartition(".")
        if section:
            if section == target:
                continue
            owner = ENGINES[section]
            use = "`gangrun run`" if section == LOCAL.name else f"`gangrun submit --target {section}`"
            raise SpecError(flag, f"is a {owner.title} option, not read by {where}", f"use it with {use}, or drop it")
        if path not in ENGINES[target].reads:
            readers = ", ".join("`gangrun run`" if r == LOCAL.name else f"--target {r}" for r in _readers(path))
            raise SpecError(flag, f"is not read by {where}", f"drop it; it is read by {readers}")


def job_from_args(args: argparse.Namespace) -> tuple[str, JobSpec, Any]:
    """(target, validated spec, the target's validated options) from a spec command's arguments."""
    target = target_of(args)
    flags = given_flags(args)
    reject_foreign_flags(args.command, target, flags)
    if args.entry is None:
        raise SpecError("ENTRY", "no script or module given", "add a script path, or -m MODULE")
    entry = Entrypoint(args.entry, is_module=args.module, args=tuple(args.entry_args))
    spec, options = resolve(entry, target, flags, profile=args.profile, profile_file=args.profile_file)
    return target, spec, options


def _spec_command(args: argparse.Namespace) -> int:
    target, spec, options = job_from_args(args)
    engine = ENGINES[target]
    preflight(spec, engine.program_is_here)
    if args.command == "render" or args.dry_run:
        print(engine.render(spec, options))
        return EXIT_OK
    sources = setting_sources(given_flags(args), profile=args.profile, profile_file=args.profile_file)
    # Said once the job is sure to start: a refusal stays the one line it is.
    timeouts = timeouts_line(spec, target, options, sources)
    if args.command == "run":
        check_before_run(spec)
        print(timeouts, file=sys.stderr, flush=True)
        return LOCAL.run(spec, options)
    handle = cluster_engine(target).submit(spec, options)
    print(f"gangrun: submitted {handle.id} ({handle.name}); folder {handle.folder}")
    print(timeouts, file=sys.stderr, flush=True)
    return EXIT_OK


def _run_command(args: argparse.Namespace) -> int:
    if args.command in SPEC_COMMANDS:
        if args.help:
            print(command_help(args.command, LOCAL.name if args.command == "run" else args.target), end="")
            return EXIT_OK
        return _spec_command(args)
    if args.command == "build":
        return build.run_build(args)
    if args.command == "doctor":
        from launcher.doctor.command import run_doctor

        return run_doctor(args)
    if args.command == "list":
        for handle in list_handles():
            print(f"{handle.id}\t{handle.name}\t{handle.folder}")
        return EXIT_OK
    handle = load_handle(args.job)
    engine = job_engine(handle.target)
    if args.command == "status":
        print(engine.status(handle))
    elif args.command == "stacks":
        try:
            print(engine.stacks(handle))
        except TimeoutError as err:
            raise SpecError("JOB", str(err), "check `gangrun status` that it still runs") from None
    elif args.command == "cancel":
        engine.cancel(handle)
    else:
        for line in engine.logs(handle, follow=args.follow, rank=args.rank):
            print(line, flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except SpecError as err:
        print(f"gangrun: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
