"""No private API of torch or any other dependency outside the one compat module per side.

Each such use is a silent break on the next release; launcher/compat.py and train/compat.py hold the
few that have no public way, each with its own shape test (tests/test_compat.py, test_train_compat.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

MODULES = sorted(p.relative_to(REPO) for package in ("launcher", "train") for p in (REPO / package).rglob("*.py")
                 if p.name != "compat.py")


# Underscored names the standard library documents as public.
DOCUMENTED = {("os", "_exit")}


def private_uses(source: str) -> list[str]:
    """Imports with a ``_private`` part, ``x._name`` on anything but self or cls, and ``"_name"``
    strings (a private attribute reached by name, as a scheduler state's ``"_step_count"`` was)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(alias.name for alias in node.names)]
            if any(part.startswith("_") and not part.startswith("__") for n in names for part in n.split(".")):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
              and (ast.unparse(node.value), node.attr) not in DOCUMENTED):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"_[a-z]\w*", node.value):
            found.append(f"line {node.lineno}: '{node.value}'")
    return found


@pytest.mark.parametrize("module", MODULES, ids=str)
def test_no_private_api_outside_compat(module: Path) -> None:
    uses = private_uses((REPO / module).read_text())
    assert not uses, f"{module} reaches private API ({'; '.join(uses)}): use a public one, or the side's compat.py"


def test_the_scan_catches_what_it_is_for() -> None:
    assert private_uses("from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter")
    assert private_uses("state = {**s, '_step_count': 3}")
    assert private_uses("executor._submit_command('')")
    assert not private_uses("self._pending = None\nx.__class__")
    assert not private_uses("os._exit(75)") and private_uses("other._exit(75)")
