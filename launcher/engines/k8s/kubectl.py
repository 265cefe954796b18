"""The Kubernetes engine's kubectl side: apply rendered objects, read state and logs back, delete."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

from launcher.contract import SAFE_PATH_FLAG, rank_of
from launcher.engines.k8s.manifests import CONTAINER_NAMES, JOB_LABEL, POD_STATUS_DIR, Obj
from launcher.engines.k8s.verdict import job_verdict
from launcher.errors import SpecError
from launcher.jobs import JobHandle
from launcher.ranks import format_ranks
from launcher.verdict import Verdict

# kubectl's names for the kinds, fully qualified so a same-named CRD elsewhere can't shadow them.
RESOURCES = {
    "job": "jobs.batch",
    "jobset": "jobsets.jobset.x-k8s.io",
    "trainjob": "trainjobs.trainer.kubeflow.org",
    "pytorchjob": "pytorchjobs.kubeflow.org",
}


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
            if rank_of(rest) != rank:
                continue
        yield line


def apply(text: str, namespace: str | None) -> str:
    """``kubectl apply`` the rendered objects; returns the namespace they went to."""
    _kubectl(apply_argv(namespace), stdin=text)
    current = ["kubectl", "config", "view", "--minify", "-o", "jsonpath={..namespace}"]
    return namespace or _kubectl(current).strip() or "default"


def job_object(handle: JobHandle) -> Obj:
    argv = [*kubectl_base(handle.extra.get("namespace")), "get",
            f"{RESOURCES[handle.extra['kind']]}/{handle.name}", "-o", "json"]
    obj: Obj = json.loads(_kubectl(argv))
    return obj


def status(handle: JobHandle) -> str:
    return summarize_status(job_object(handle))


def failed_verdict(handle: JobHandle) -> Verdict | None:
    """A failed job's verdict from its object and its pods' status (launcher.engines.k8s.verdict)."""
    argv = [*kubectl_base(handle.extra.get("namespace")), "get", "pods", "-l", f"{JOB_LABEL}={handle.name}",
            "-o", "json"]
    return job_verdict(job_object(handle), json.loads(_kubectl(argv)).get("items", []))


def logs(handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]:
    if not follow:
        yield from filter_rank(iter(_kubectl(logs_argv(handle, follow)).splitlines()), rank)
        return
    with subprocess.Popen(logs_argv(handle, follow), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        yield from filter_rank(proc.stdout, rank)


def pods_argv(handle: JobHandle) -> list[str]:
    """The names of the job's running pods, space-separated."""
    return [*kubectl_base(handle.extra.get("namespace")), "get", "pods", "-l", f"{JOB_LABEL}={handle.name}",
            "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}"]


def exec_argv(handle: JobHandle, pod: str, command: str) -> list[str]:
    """``launcher.ranks`` in one pod, reading what its agent published in POD_STATUS_DIR."""
    container = CONTAINER_NAMES[handle.extra["kind"]]
    return [*kubectl_base(handle.extra.get("namespace")), "exec", pod, "-c", container, "--",
            "python", SAFE_PATH_FLAG, "-m", "launcher.ranks", command, POD_STATUS_DIR]


def _running_pods(handle: JobHandle) -> list[str]:
    return _kubectl(pods_argv(handle)).split()


def ranks(handle: JobHandle) -> str:
    rows = [row for pod in _running_pods(handle) for row in json.loads(_kubectl(exec_argv(handle, pod, "ranks")))]
    return format_ranks(sorted(rows, key=lambda row: int(row["rank"])))


def stacks(handle: JobHandle) -> str:
    pods = _running_pods(handle)
    if not pods:
        raise SpecError("JOB", f"{handle.id} has no running pod", "stacks are taken from a running job")
    return "\n".join(f"# pod {pod}\n{_kubectl(exec_argv(handle, pod, 'stacks'))}" for pod in pods)


def cancel(handle: JobHandle) -> None:
    _kubectl(delete_argv(handle))
