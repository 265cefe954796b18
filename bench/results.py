"""One bench row: a figure measured side by side with its reference, its goal, and whether it met it.

Every bench script can write its rows as JSON (``--json PATH``); ``bench/run_all.py`` (``make bench``)
collects them into one table, ``bench/results/latest.json`` and a chart. Nothing here asserts: a
missed goal is printed for a person to read.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# How a row's value is held against its goal.
_COMPARE = {">=": operator.ge, "<=": operator.le}


@dataclass
class Row:
    """One figure: ``value`` (a ratio or a difference) held against ``goal`` with ``compare``.

    ``repeats`` are the per-repeat values behind ``value``: the worst of them where the goal must
    hold in every repeat, else their median; ``detail`` is the raw figures in words; ``raw`` goes
    to the JSON only.
    """

    name: str
    value: float | None
    goal: float
    compare: str
    unit: str = ""
    detail: str = ""
    repeats: list[float] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """None when the row could not be measured here (e.g. a GPU row on a machine without one)."""
        if self.value is None:
            return None
        return bool(_COMPARE[self.compare](self.value, self.goal))

    def line(self) -> str:
        verdict = {True: "met", False: "MISSED", None: "not run"}[self.met]
        value = "-" if self.value is None else f"{self.value:.3f}{self.unit}"
        goal = f"{self.compare} {self.goal:g}{self.unit}"
        return f"{self.name:<64} {value:>8}  goal {goal:<8} {verdict:<7} {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def worst(values: list[float], compare: str) -> float:
    """The repeat furthest from meeting a goal held with ``compare``."""
    return min(values) if compare == ">=" else max(values)


def report(rows: list[Row], json_path: str | None) -> None:
    """What every bench script ends with: its rows printed, and written as JSON when asked (``--json``)."""
    for row in rows:
        print(row.line(), flush=True)
    if json_path:
        write_rows(json_path, rows)


def write_rows(path: str | Path, rows: list[Row]) -> None:
    Path(path).write_text(json.dumps([row.to_json() for row in rows], indent=1) + "\n")


def read_rows(path: str | Path) -> list[Row]:
    rows = []
    for item in json.loads(Path(path).read_text()):
        item.pop("met", None)
        rows.append(Row(**item))
    return rows
