"""The checked objects for a job and their YAML: what `render` prints and `submit` applies."""

from __future__ import annotations

from launcher.engines.k8s.checks import check_objects, check_spec
from launcher.engines.k8s.manifests import Obj, build_objects
from launcher.engines.k8s.options import K8sOptions
from launcher.spec import JobSpec


def render_objects(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """The checked objects for ``spec``; SpecError (exit 2) before anything is printed or applied."""
    check_spec(spec, k8s)
    objects = build_objects(spec, k8s)
    check_objects(spec, k8s, objects)
    return objects


def dump_yaml(objects: list[Obj]) -> str:
    """One YAML stream; values are serialized as data, so no user string can add keys or documents."""
    # Imported on use: every `gangrun run` imports this module, and never needs YAML.
    import yaml

    text: str = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)
    return text
