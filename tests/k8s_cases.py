"""Rendered manifests the Kubernetes tests share, and the engines that validate them offline."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from launcher.cli import build_parser, job_from_args
from launcher.engines.k8s.manifests import COMPLETION_INDEX_ANNOTATION, PET_VARS
from launcher.engines.k8s.options import K8sOptions
from launcher.engines.k8s.render import render_objects
from launcher.spec import JobSpec

REPO = Path(__file__).resolve().parent.parent
CRDS = Path(__file__).resolve().parent / "data" / "crds"
GOLDEN = Path(__file__).resolve().parent / "golden"
KINDS = ("job", "jobset", "trainjob", "pytorchjob")
# Oldest with podFailurePolicy, successPolicy and backoffLimitPerIndex GA, and the newest the
# package knows: a field dropped or renamed between them fails one of the two.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
CRD_FILES = {"JobSet": "jobset", "TrainJob": "trainjob", "PyTorchJob": "pytorchjob"}
BUILTIN_KINDS = {"Service", "Job"}
GPU_FLAGS = ("--name llm-pretrain --nnodes 4 --nproc-per-node 8 --gpus-per-node 8 --image registry.example/gangrun:1.0 "
             "--namespace ml --cpu 32 --memory 512Gi --shm-size 64Gi --time 2-00:00:00 --gang-restarts 3 "
             "--checkpoint-pvc llm-checkpoints --toleration nvidia.com/gpu=NoSchedule --node-selector pool=h100 "
             "--secret-env AWS_ACCESS_KEY_ID=s3-creds:access-key --env NCCL_DEBUG=WARN --mount /data/tokens:/data:ro "
             "-m train --config gpt-tiny "
             "train.global_batch_size=256 train.micro_batch_size=8 output_dir=/checkpoints/llm")


def header_command(path: Path) -> list[str]:
    """The `gangrun render ...` argv in a k8s/*.yaml header: `# Rendered by: gangrun ...`, backslash-continued."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# Rendered by: gangrun "), f"{path}: first line must name its render command"
    command = []
    for line in lines:
        command.append(line.removeprefix("# Rendered by: gangrun ").removeprefix("#").strip().rstrip("\\"))
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))


def spec_for(argv: list[str]) -> tuple[JobSpec, K8sOptions]:
    """The spec and Kubernetes options a `gangrun render --target k8s ...` argv resolves to."""
    _, spec, options = job_from_args(build_parser().parse_args(argv))
    return spec, options


def render_cases() -> dict[str, list[str]]:
    """Case name -> `gangrun` argv: the shipped k8s/ manifests and a GPU variant of each kind."""
    cases = {path.stem: header_command(path) for path in sorted((REPO / "k8s").glob("*.yaml"))}
    for kind in KINDS:
        cases[f"{kind}-gpu"] = ["render", "--target", "k8s", "--kind", kind, *shlex.split(GPU_FLAGS)]
    return cases


def rendered(argv: list[str]) -> list[dict[str, Any]]:
    return render_objects(*spec_for(argv))


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The published schema, closed: unknown fields fail instead of being pruned by the API server."""
    doc = json.loads((CRDS / f"{CRD_FILES[kind]}.schema.json").read_text())
    return close_objects(doc["schema"])


def close_objects(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: close_objects(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [close_objects(v) for v in node]
    return node


def crd_api_version(kind: str) -> str:
    doc = json.loads((CRDS / f"{CRD_FILES[kind]}.schema.json").read_text())
    return f"{doc['group']}/{doc['version']}"


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Validate one object with the engine for its kind; returns what validated it. Unknown kind fails."""
    kind = obj["kind"]
    if kind in BUILTIN_KINDS:
        # kubernetes-validate raises SchemaNotFoundError for kinds it lacks; its CLI passes them.
        return [f"kubernetes-validate {kubernetes_validate.validate(obj, v, strict=True)}" for v in K8S_VERSIONS]
    if kind in CRD_FILES:
        assert obj["apiVersion"] == crd_api_version(kind)
        jsonschema.Draft7Validator(crd_schema(kind)).validate(obj)
        return [f"jsonschema {CRD_FILES[kind]}"]
    raise AssertionError(f"no schema validates kind {kind}")


def yamllint(text: str) -> subprocess.CompletedProcess:
    config = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
              "indentation: {indent-sequences: whatever}}}")
    return subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-d", config, "-"],
                          input=text, capture_output=True, text=True)


def controller_env(obj_kind: str, name: str, node_rank: int, container: dict[str, Any], nnodes: int,
                   nproc: str) -> dict[str, str]:
    """The environment a controller gives node ``node_rank``'s container, as its source code does.

    Indexed Job/JobSet: our own env list, with the completion-index fieldRef resolved. Trainer v2.3's
    torch plugin and training-operator v1.9 inject PET_* themselves (see launcher.engines.k8s.manifests).
    """
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif entry["valueFrom"].get("fieldRef", {}).get("fieldPath") == (
                f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"):
            env[entry["name"]] = str(node_rank)
    if obj_kind == "TrainJob":
        env.update(PET_NNODES=str(nnodes), PET_NPROC_PER_NODE=nproc, PET_NODE_RANK=str(node_rank),
                   PET_MASTER_ADDR=f"{name}-node-0-0.{name}", PET_MASTER_PORT="29500")
    if obj_kind == "PyTorchJob":
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "pytorchjob-port")
        env.update(PET_NNODES=str(nnodes), PET_NPROC_PER_NODE=nproc, PET_NODE_RANK=str(node_rank),
                   PET_MASTER_ADDR=f"{name}-master-0", PET_MASTER_PORT=str(port),
                   MASTER_ADDR=f"{name}-master-0", MASTER_PORT=str(port), RANK=str(node_rank))
    assert set(PET_VARS) <= set(env), f"{obj_kind}: contract incomplete: {sorted(env)}"
    return env


def expand(argv: list[str], env: dict[str, str]) -> list[str]:
    """The kubelet's ``$(VAR)`` expansion of a container command (unknown references stay as is)."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
            for arg in argv]


def pod_container(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(container, command) of the training pods of a workload object."""
    kind = obj["kind"]
    if kind == "Job":
        container = obj["spec"]["template"]["spec"]["containers"][0]
    elif kind == "JobSet":
        container = obj["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    elif kind == "PyTorchJob":
        container = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    else:
        trainer = obj["spec"]["trainer"]
        container = {"env": trainer.get("env", []), "command": trainer["command"]}
    return container, container["command"]


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] != "Service")


def load_stream(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]
