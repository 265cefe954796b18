"""Maintainer tool: extract the served schema of a CustomResourceDefinition into compact JSON.

    python tests/data/crds/extract.py CRD.yaml OUT.schema.json

Keeps spec.versions[served, storage].schema.openAPIV3Schema and drops every "description" (most of
the size); validation keywords stay as published. Tests read only the output, never the CRD file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def extract(crd: dict[str, Any]) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage"))
    return {
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }


def main(argv: list[str]) -> int:
    source, out = Path(argv[0]), Path(argv[1])
    out.write_text(json.dumps(extract(yaml.safe_load(source.read_text())), separators=(",", ":"), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
