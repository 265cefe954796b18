"""Options declared once, next to their field: help text, flag, parser and type checks for every layer.

A JobSpec or engine-options field made with :func:`option` carries what the CLI, the profile file
and the ``GANGRUN_*`` variables need, so a flag's help line, its profile key and its error
messages can never drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from launcher.errors import SpecError


@dataclass(frozen=True)
class OptionMeta:
    """What a field tells the CLI and the profile layers about itself."""

    help: str
    flag: str | None = None
    metavar: str | None = None
    # Turns a flag's text or a profile's value into the field's value (e.g. "1:4" -> NodeRange).
    parse: Callable[[Any], Any] | None = None
    # Said in the help line when the default is computed elsewhere (None means: show the value).
    default_text: str | None = None


def option(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None, metavar: str | None = None,
           parse: Callable[[Any], Any] | None = None, default_text: str | None = None,
           default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its option metadata (use as ``x: int = option(3, help="...")``)."""
    meta = {"option": OptionMeta(help, flag, metavar, parse, default_text)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One settable field, addressed by its dotted path (``nnodes``, ``slurm.partition``)."""

    path: str
    hint: Any
    meta: OptionMeta
    default: Any

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def flag(self) -> str:
        return self.meta.flag or "--" + self.name.replace("_", "-")

    @property
    def is_mapping(self) -> bool:
        return typing.get_origin(_base(self.hint)) is dict

    @property
    def is_list(self) -> bool:
        """A repeatable flag (``--mount A --mount B``), a TOML array in a profile."""
        return typing.get_origin(_base(self.hint)) is tuple

    @property
    def is_bool(self) -> bool:
        return _base(self.hint) is bool

    @property
    def env_var(self) -> str:
        return "GANGRUN_" + self.path.upper().replace(".", "_")

    def help_line(self) -> str:
        """The help text, then the default, so every flag says what it does, its unit and its default."""
        if self.meta.default_text is not None:
            default = self.meta.default_text
        elif self.is_bool:
            default = "on" if self.default else "off"
        elif self.default in (None, {}, "", ()):
            default = "none"
        else:
            default = str(self.default)
        return f"{self.meta.help} (default: {default})"

    def coerce(self, value: Any, where: str = "") -> Any:
        """A TOML value, or a flag's or variable's text, as the field's type; SpecError names the field."""
        field_name = f"{where}{self.path}"
        if self.meta.parse is not None:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise SpecError(field_name, f"{value!r} is not a number or range", "use e.g. 2 or \"1:4\"")
            return self.meta.parse(value)
        base = _base(self.hint)
        if typing.get_origin(base) is dict:
            if not isinstance(value, Mapping) or not all(isinstance(v, (str, int, float)) for v in value.values()):
                raise SpecError(field_name, "is not a table of strings", f"write [{self.path}] KEY = \"value\"")
            return {str(k): str(v) for k, v in value.items()}
        if typing.get_origin(base) is tuple:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, str) for v in value):
                raise SpecError(field_name, "is not a list of strings", f"write {self.path} = [\"...\"]")
            return tuple(value)
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise SpecError(field_name, f"{value!r} is not true or false", "use true or false")
        if base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise SpecError(field_name, f"{value!r} is not a whole number", "use e.g. 3")
        if base is str:
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                return str(value)
            raise SpecError(field_name, f"{value!r} is not a string", "quote it")
        raise TypeError(f"no coercion for {self.path}: {self.hint}")


def _base(hint: Any) -> Any:
    """``X | None`` -> ``X``; anything else as it is."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None))
    return hint


def options_of(cls: type, section: str | None = None) -> list[Option]:
    """The option fields of dataclass ``cls``, their paths under ``section`` when given."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        path = f"{section}.{f.name}" if section else f.name
        found.append(Option(path, hints[f.name], meta, default))
    return found
