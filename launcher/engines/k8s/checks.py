"""Checks on rendered Kubernetes objects that no schema makes: names, DNS, selectors, contract, GPUs.

Each raises SpecError (one line: field, problem, fix; the CLI exits 2) before anything is applied.
They read the built objects, not the spec, so they hold for whatever a renderer produced.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from launcher.engines.k8s.manifests import COMPLETION_INDEX_ANNOTATION, PET_VARS, Form, Obj, form_of
from launcher.engines.k8s.options import KINDS, K8sOptions
from launcher.errors import SpecError
from launcher.images import check_oci_reference
from launcher.spec import JobSpec

DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# RFC 1035: TrainJob's CEL rule also wants a leading letter.
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes resource.Quantity: a decimal number with an optional binary or decimal suffix.
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_SECRET_REF = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[-._a-zA-Z0-9]+$")


def check_spec(spec: JobSpec, k8s: K8sOptions) -> None:
    """Checks on the spec and the Kubernetes options that must pass before objects are built."""
    name, kind = spec.job_name, k8s.kind
    if kind not in KINDS:
        raise SpecError("k8s.kind", f"'{kind}' is not a known kind", f"use one of: {', '.join(KINDS)}")
    if k8s.checkpoint_budget_s < 1:
        raise SpecError("k8s.checkpoint_budget_s", f"{k8s.checkpoint_budget_s} seconds", "use 1 or more")
    if k8s.gang_restarts < 0:
        raise SpecError("k8s.gang_restarts", f"{k8s.gang_restarts} is negative", "use 0 or more")
    if spec.image is not None:
        check_oci_reference(spec.image)
    pattern = _DNS_1035 if kind == "trainjob" else _DNS_LABEL
    if not pattern.match(name) or len(name) > DNS_LABEL_MAX:
        raise SpecError("name", f"'{name}' is not a DNS label for a {kind}",
                        "use lowercase letters, digits and '-', starting with a letter, e.g. --name my-run")
    form = form_of(spec, k8s)
    if len(form.longest_hostname) > DNS_LABEL_MAX:
        room = DNS_LABEL_MAX - (len(form.longest_hostname) - len(name))
        raise SpecError("name", f"pod hostname '{form.longest_hostname}' is longer than {DNS_LABEL_MAX} characters",
                        f"use a name of at most {room} characters")
    if spec.nnodes.elastic and kind in ("trainjob", "pytorchjob"):
        raise SpecError("nnodes", f"an elastic range ({spec.nnodes}) is not rendered for a {kind}",
                        "use a fixed --nnodes, or --kind job|jobset")
    for field_name, value in (("k8s.cpu", k8s.cpu), ("k8s.memory", k8s.memory),
                              ("k8s.shm_size", k8s.shm_size)):
        if value is not None and not _QUANTITY.match(value):
            raise SpecError(field_name, f"'{value}' is not a Kubernetes quantity", "use e.g. 4, 500m, 16Gi")
    for key, effect in k8s.tolerations.items():
        if effect not in _TAINT_EFFECTS:
            raise SpecError("k8s.tolerations", f"'{key}={effect}' has an unknown effect",
                            f"use KEY=EFFECT with EFFECT one of {', '.join(_TAINT_EFFECTS)}")
    for var, ref in k8s.secret_env.items():
        if not _SECRET_REF.match(ref):
            raise SpecError("k8s.secret_env", f"'{var}={ref}' is not VAR=SECRET:KEY",
                            "use e.g. --secret-env AWS_SECRET_ACCESS_KEY=s3-creds:secret-key")
    for var in (*spec.env, *k8s.secret_env):
        if var in PET_VARS:
            raise SpecError("env", f"{var} is set by gangrun's environment contract", f"drop {var} from --env")
    if k8s.checkpoint_pvc is not None and not _DNS_LABEL.match(k8s.checkpoint_pvc):
        raise SpecError("k8s.checkpoint_pvc", f"'{k8s.checkpoint_pvc}' is not a PVC name",
                        "use the name of a ReadWriteMany PersistentVolumeClaim")


def pod_templates(obj: Obj) -> Iterator[tuple[Obj, Obj | None]]:
    """(pod template, its Job spec or None) for every pod template inside ``obj``."""
    spec = obj.get("spec", {})
    kind = obj["kind"]
    if kind == "Job":
        yield spec["template"], spec
    elif kind == "JobSet":
        for rjob in spec["replicatedJobs"]:
            yield rjob["template"]["spec"]["template"], rjob["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica in spec["pytorchReplicaSpecs"].values():
            yield replica["template"], None


def env_value(container: Obj, name: str) -> Any:
    for entry in container.get("env", []):
        if entry["name"] == name:
            return entry.get("value", entry.get("valueFrom"))
    return None


def check_pod(template: Obj, job: Obj | None, spec: JobSpec, form: Form) -> None:
    pod = template["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    memory_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
    if mounts.get("/dev/shm") not in memory_volumes:
        raise SpecError("k8s.shm_size", "/dev/shm is not a memory-backed emptyDir (the runtime gives 64 MB)",
                        "mount an emptyDir with medium: Memory at /dev/shm")
    if job is not None and "podFailurePolicy" in job and pod.get("restartPolicy") != "Never":
        raise SpecError("k8s.kind", "podFailurePolicy needs restartPolicy: Never in the pod template",
                        "set restartPolicy: Never")
    if isinstance(spec.nproc_per_node, int) and spec.gpus_per_node:
        gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if spec.nproc_per_node > gpus:
            raise SpecError("nproc_per_node", f"{spec.nproc_per_node} processes but {gpus} GPUs limited per pod",
                            f"use --nproc-per-node {gpus} or --gpus-per-node {spec.nproc_per_node}")
    limits = container.get("resources", {}).get("limits", {})
    requests = container.get("resources", {}).get("requests", {})
    if limits.get("nvidia.com/gpu") != requests.get("nvidia.com/gpu"):
        raise SpecError("gpus_per_node", "GPU requests differ from limits", "request and limit the same count")
    if not form.injects_pet:
        addr = env_value(container, "PET_MASTER_ADDR")
        if addr != form.master_addr:
            raise SpecError("PET_MASTER_ADDR", f"'{addr}' is not rank 0's DNS name '{form.master_addr}'",
                            "render the manifest with gangrun instead of editing the address")
        rank = env_value(container, "PET_NODE_RANK")
        expected = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}
        if rank != expected:
            raise SpecError("PET_NODE_RANK", "is not the pod's job-completion-index", "use the downward API fieldRef")


def check_service(service: Obj, job: Obj) -> None:
    template = job["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    selector = service["spec"]["selector"]
    if any(pod_labels.get(k) != v for k, v in selector.items()):
        raise SpecError("k8s", f"Service selector {selector} does not match the pod labels {pod_labels}",
                        "use the same labels on both")
    if template["spec"].get("subdomain") != service["metadata"]["name"]:
        raise SpecError("k8s", f"pod subdomain '{template['spec'].get('subdomain')}' is not the Service name "
                        f"'{service['metadata']['name']}'", "set subdomain to the headless Service's name")
    if not service["spec"].get("publishNotReadyAddresses"):
        raise SpecError("k8s", "the headless Service hides pods until they are Ready, so rank 0 does not resolve",
                        "set publishNotReadyAddresses: true")


def check_trainjob(obj: Obj) -> None:
    """Trainer v2.3 patches only through runtimePatches; it has no pod-level shm or restart settings."""
    if "podTemplateOverrides" in obj["spec"]:
        raise SpecError("k8s.kind", "TrainJob v2.3 rejects podTemplateOverrides", "use runtimePatches")
    patches = obj["spec"].get("runtimePatches", [])
    pods = [rjob["template"]["spec"]["template"]["spec"]
            for patch in patches for rjob in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
    shm = [m for pod in pods for c in pod.get("containers", []) for m in c.get("volumeMounts", [])
           if m["mountPath"] == "/dev/shm"]
    if not shm:
        raise SpecError("k8s.shm_size", "the TrainJob does not patch a memory-backed /dev/shm into the runtime",
                        "add a dshm emptyDir through runtimePatches")


def check_objects(spec: JobSpec, k8s: K8sOptions, objects: list[Obj]) -> None:
    """Cross-object checks on what a renderer built for ``spec``."""
    form = form_of(spec, k8s)
    by_kind = {obj["kind"]: obj for obj in objects}
    for obj in objects:
        name = obj["metadata"]["name"]
        if not _DNS_LABEL.match(name) or len(name) > DNS_LABEL_MAX:
            raise SpecError("name", f"{obj['kind']} name '{name}' is not a DNS label", "use e.g. --name my-run")
        for template, job in pod_templates(obj):
            check_pod(template, job, spec, form)
    if "Service" in by_kind and "Job" in by_kind:
        check_service(by_kind["Service"], by_kind["Job"])
    if "TrainJob" in by_kind:
        check_trainjob(by_kind["TrainJob"])
