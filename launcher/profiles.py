"""Resolve a job from layers: flags > environment (GANGRUN_*) > gangrun.toml profile > defaults.

The common JobSpec fields sit at the top level of gangrun.toml; each engine's options in a table
named after the engine (``[slurm]``, ``[k8s]``, ``[local]``), all driven by the engine registry.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from launcher.engines import ENGINES
from launcher.errors import SpecError
from launcher.options import Option, options_of
from launcher.spec import Entrypoint, JobSpec

PROFILE_FILE = "gangrun.toml"


@cache
def all_options() -> dict[str, Option]:
    """Every dotted path a profile, variable or flag may set: the spec's, then each engine's."""
    found = {opt.path: opt for opt in options_of(JobSpec)}
    for name, engine in ENGINES.items():
        found.update((opt.path, opt) for opt in options_of(engine.options, section=name))
    return found


def _flatten(table: Mapping[str, Any], options: Mapping[str, Option], where: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if path in options:
            out[path] = options[path].coerce(value, where)
        elif key in ENGINES and not prefix and isinstance(value, Mapping):
            out.update(_flatten(value, options, where, prefix=f"{key}."))
        else:
            known = ", ".join(sorted(k for k in options if k.startswith(prefix) and "." not in k[len(prefix):]))
            raise SpecError(f"{where}{path}", "unknown key", f"known keys here: {known}")
    return out


def load_profile(path: Path, profile: str | None) -> dict[str, Any]:
    """The base table of gangrun.toml overlaid with ``[profile.NAME]``, as dotted paths."""
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(str(path), f"is not valid TOML ({err})", "fix the syntax") from None
    profiles = doc.pop("profile", {})
    options = all_options()
    settings = _flatten(doc, options, f"{path}: ")
    if profile is not None:
        if profile not in profiles:
            names = ", ".join(sorted(profiles)) or "none"
            raise SpecError("profile", f"'{profile}' is not in {path}", f"use one of: {names}")
        overlay = _flatten(profiles[profile], options, f"{path}: profile.{profile}.")
        settings = _merge(settings, overlay)
    return settings


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay ``top`` on ``base``; tables (env, node selectors) merge key by key."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    """Scalar fields set through ``GANGRUN_<PATH>`` variables (``GANGRUN_SLURM_PARTITION=gpu``)."""
    return {path: opt.coerce(environ[opt.env_var], f"${opt.env_var}: ")
            for path, opt in all_options().items()
            if opt.env_var in environ and not (opt.is_mapping or opt.is_list)}


def _profile_path(profile: str | None, profile_file: Path | None,
                  environ: Mapping[str, str]) -> tuple[str | None, Path]:
    return profile or environ.get("GANGRUN_PROFILE") or None, profile_file or Path(
        environ.get("GANGRUN_CONFIG", PROFILE_FILE))


def setting_sources(flags: Mapping[str, Any], profile: str | None = None, profile_file: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which layer set each option path (``flag``, ``$GANGRUN_X``, ``gangrun.toml [profile.p]``); unset: absent."""
    environ = os.environ if environ is None else environ
    profile, path = _profile_path(profile, profile_file, environ)
    sources: dict[str, str] = {}
    if path.is_file():
        where = f"{path}" + (f" [profile.{profile}]" if profile else "")
        sources.update((key, where) for key in load_profile(path, profile))
    sources.update((key, f"${all_options()[key].env_var}") for key in environment_layer(environ))
    sources.update((key, "flag") for key, value in flags.items() if value is not None)
    return sources


def resolve(
    entrypoint: Entrypoint,
    engine: str,
    flags: Mapping[str, Any],
    profile: str | None = None,
    profile_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[JobSpec, Any]:
    """The validated JobSpec and ``engine``'s validated options, from every layer."""
    environ = os.environ if environ is None else environ
    profile, path = _profile_path(profile, profile_file, environ)
    settings: dict[str, Any] = {}
    if path.is_file():
        settings = load_profile(path, profile)
    elif profile is not None or profile_file is not None:
        raise SpecError("profile", f"no profile file at {path}", f"create {PROFILE_FILE} or pass --profile-file")
    options = all_options()
    given = {k: options[k].coerce(v) for k, v in flags.items() if v is not None}
    settings = _merge(_merge(settings, environment_layer(environ)), given)
    spec = JobSpec(entrypoint=entrypoint, **{k: v for k, v in settings.items() if "." not in k}).validate()
    chosen = ENGINES[engine]
    engine_options = chosen.options(**{k.split(".", 1)[1]: v for k, v in settings.items()
                                       if k.startswith(f"{engine}.")})
    chosen.validate(spec, engine_options)
    return spec, engine_options
