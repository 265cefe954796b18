"""The Kubernetes target: render manifests, apply them with kubectl, and read state and logs back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Iterator

import yaml

from launcher.errors import SpecError
from launcher.jobs import JobHandle
from launcher.k8s_checks import check_objects, check_spec
from launcher.k8s_manifests import JOB_LABEL, Obj, build_objects
from launcher.spec import JobSpec

# kubectl's names for the kinds, fully qualified so a same-named CRD elsewhere can't shadow them.
RESOURCES = {
    "job": "jobs.batch",
    "jobset": "jobsets.jobset.x-k8s.io",
    "trainjob": "trainjobs.trainer.kubeflow.org",
    "pytorchjob": "pytorchjobs.kubeflow.org",
}
_RANK_LINE = re.compile(r"^\[rank(\d+)\]:")


def render_objects(spec: JobSpec) -> list[Obj]:
    """The checked objects for ``spec``; SpecError (exit 2) before anything is printed or applied."""
    check_spec(spec)
    objects = build_objects(spec)
    check_objects(spec, objects)
    return objects


def dump_yaml(objects: list[Obj]) -> str:
    """One YAML stream; values are serialized as data, so no user string can add keys or documents."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=120)


def kubectl_base(namespace: str | None) -> list[str]:
    return ["kubectl", *(["--namespace", namespace] if namespace else [])]


def apply_argv(namespace: str | None) -> list[str]:
    return [*kubectl_base(namespace), "apply", "-f", "-"]


def delete_argv(handle: JobHandle) -> list[str]:
    names = [f"{RESOURCES[handle.extra['kind']]}/{handle.name}"]
    if handle.extra["kind"] == "job":
        names.append(f"services/{handle.name}")
    return [*kubectl_base(handle.extra.get("namespace") or None), "delete", "--ignore-not-found", *names]


def _kubectl(argv: list[str], stdin: str | None = None) -> str:
    if shutil.which("kubectl") is None:
        raise SpecError("kubectl", "not found on PATH", "install kubectl and point it at your cluster")
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:300] or f"exit {proc.returncode}"
        raise SpecError("kubectl", f"`{' '.join(argv[:4])}` failed: {detail}",
                        "check `kubectl config current-context` and your access to the namespace")
    return proc.stdout


def summarize_status(obj: Obj) -> str:
    """One line from a job object's status: its last true condition, else active/succeeded counts."""
    status = obj.get("status", {})
    conditions = [c for c in status.get("conditions", []) if c.get("status") == "True"]
    if conditions:
        last = conditions[-1]
        reason = f" ({last['reason']})" if last.get("reason") else ""
        return f"{last['type']}{reason}"
    counts = {k: status[k] for k in ("active", "ready", "succeeded", "failed") if status.get(k)}
    if counts:
        return "Running " + " ".join(f"{k}={v}" for k, v in counts.items())
    return "Pending"


def logs_argv(handle: JobHandle, follow: bool) -> list[str]:
    """Every pod of the job at once, each line prefixed ``[pod/<name>/<container>]`` by kubectl."""
    return [*kubectl_base(handle.extra.get("namespace")), "logs", "-l", f"{JOB_LABEL}={handle.name}",
            "--prefix", "--tail=-1", "--max-log-requests=64", *(["--follow"] if follow else [])]


def filter_rank(lines: Iterator[str], rank: int | None) -> Iterator[str]:
    """Pass lines through; with ``rank``, only those of that global rank (``[rankN]:`` after the pod)."""
    for line in lines:
        line = line.rstrip("\n")
        if rank is not None:
            _, _, rest = line.partition("] ")
            match = _RANK_LINE.match(rest)
            if match is None or int(match.group(1)) != rank:
                continue
        yield line


class KubernetesTarget:
    name = "k8s"

    def render(self, spec: JobSpec) -> str:
        # The CLI prints it with a newline of its own.
        return dump_yaml(render_objects(spec)).rstrip("\n")

    def submit(self, spec: JobSpec) -> JobHandle:
        text = self.render(spec)
        _kubectl(apply_argv(spec.k8s.namespace), stdin=text)
        namespace = spec.k8s.namespace or _kubectl(
            ["kubectl", "config", "view", "--minify", "-o", "jsonpath={..namespace}"]).strip() or "default"
        handle = JobHandle(target=self.name, native_id=f"{namespace}.{spec.job_name}", name=spec.job_name,
                           extra={"kind": spec.k8s.kind, "namespace": namespace})
        handle.save()
        return handle

    def status(self, handle: JobHandle) -> str:
        argv = [*kubectl_base(handle.extra.get("namespace")), "get",
                f"{RESOURCES[handle.extra['kind']]}/{handle.name}", "-o", "json"]
        return summarize_status(json.loads(_kubectl(argv)))

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        if not follow:
            yield from filter_rank(iter(_kubectl(logs_argv(handle, follow)).splitlines()), rank)
            return
        with subprocess.Popen(logs_argv(handle, follow), stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            yield from filter_rank(proc.stdout, rank)

    def cancel(self, handle: JobHandle) -> None:
        _kubectl(delete_argv(handle))


TARGET = KubernetesTarget()
