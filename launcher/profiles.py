"""Build a JobSpec from layers: flags > environment (GANGRUN_*) > gangrun.toml profile > defaults."""

from __future__ import annotations

import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Mapping

from launcher.errors import SpecError
from launcher.spec import (
    Entrypoint,
    JobSpec,
    K8sOptions,
    SlurmOptions,
    parse_nnodes,
    parse_nproc_per_node,
)

PROFILE_FILE = "gangrun.toml"
_SECTIONS: dict[str, type] = {"slurm": SlurmOptions, "k8s": K8sOptions}
_SPECIAL = {"nnodes": parse_nnodes, "nproc_per_node": parse_nproc_per_node}
_SKIP = {"entrypoint", *_SECTIONS}


def settable_fields() -> dict[str, Any]:
    """Every dotted spec path a profile, variable or flag may set, with its type hint."""
    out: dict[str, Any] = {}
    for f_name, hint in typing.get_type_hints(JobSpec).items():
        if f_name not in _SKIP:
            out[f_name] = hint
    for section, cls in _SECTIONS.items():
        for f_name, hint in typing.get_type_hints(cls).items():
            out[f"{section}.{f_name}"] = hint
    return out


def env_var_name(path: str) -> str:
    return "GANGRUN_" + path.upper().replace(".", "_")


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) is dict


def _coerce(path: str, hint: Any, value: Any, where: str) -> Any:
    """Turn a TOML value or a string from a flag or variable into the field's type."""
    if path in _SPECIAL:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SpecError(f"{where}{path}", f"{value!r} is not a number or range", "use e.g. 2 or \"1:4\"")
        return _SPECIAL[path](value)
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if _is_mapping(base):
        if not isinstance(value, Mapping) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise SpecError(f"{where}{path}", "is not a table of strings", f"write [{path}] KEY = \"value\"")
        return {str(k): str(v) for k, v in value.items()}
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise SpecError(f"{where}{path}", f"{value!r} is not true or false", "use true or false")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise SpecError(f"{where}{path}", f"{value!r} is not a whole number", "use e.g. 3")
    if base is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{where}{path}", f"{value!r} is not a string", "quote it")
    raise TypeError(f"no coercion for {path}: {hint}")


def _flatten(table: Mapping[str, Any], fields: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if path in fields:
            out[path] = _coerce(path, fields[path], value, where)
        elif key in _SECTIONS and not prefix and isinstance(value, Mapping):
            out.update(_flatten(value, fields, where, prefix=f"{key}."))
        else:
            known = ", ".join(sorted(k for k in fields if k.startswith(prefix) and "." not in k[len(prefix):]))
            raise SpecError(f"{where}{path}", "unknown key", f"known keys here: {known}")
    return out


def load_profile(path: Path, profile: str | None) -> dict[str, Any]:
    """The base table of gangrun.toml overlaid with ``[profile.NAME]``, as dotted paths."""
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SpecError(str(path), f"is not valid TOML ({err})", "fix the syntax") from None
    profiles = doc.pop("profile", {})
    fields = settable_fields()
    settings = _flatten(doc, fields, f"{path}: ")
    if profile is not None:
        if profile not in profiles:
            names = ", ".join(sorted(profiles)) or "none"
            raise SpecError("profile", f"'{profile}' is not in {path}", f"use one of: {names}")
        overlay = _flatten(profiles[profile], fields, f"{path}: profile.{profile}.")
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
    """Scalar spec fields set through ``GANGRUN_<PATH>`` variables."""
    fields = settable_fields()
    out: dict[str, Any] = {}
    for path, hint in fields.items():
        name = env_var_name(path)
        if name in environ and not _is_mapping(hint):
            out[path] = _coerce(path, hint, environ[name], f"${name}: ")
    return out


def build_spec(
    entrypoint: Entrypoint,
    flags: Mapping[str, Any],
    profile: str | None = None,
    profile_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> JobSpec:
    """Layer defaults, the profile file, GANGRUN_* variables and flags; validate the result."""
    environ = os.environ if environ is None else environ
    profile = profile or environ.get("GANGRUN_PROFILE") or None
    path = profile_file or Path(environ.get("GANGRUN_CONFIG", PROFILE_FILE))
    settings: dict[str, Any] = {}
    if path.is_file():
        settings = load_profile(path, profile)
    elif profile is not None or profile_file is not None:
        raise SpecError("profile", f"no profile file at {path}", f"create {PROFILE_FILE} or pass --profile-file")
    fields = settable_fields()
    given = {k: _coerce(k, fields[k], v, "") for k, v in flags.items() if v is not None}
    settings = _merge(_merge(settings, environment_layer(environ)), given)
    top = {k: v for k, v in settings.items() if "." not in k}
    sections = {
        name: cls(**{k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith(f"{name}.")})
        for name, cls in _SECTIONS.items()
    }
    return JobSpec(entrypoint=entrypoint, **top, **sections).validate()

