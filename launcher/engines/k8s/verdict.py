"""A failed Kubernetes job's verdict, from the pods' and the job's status as kubectl prints them (JSON).

A pod's agent writes its verdict inside the pod, gone with it; what outlives the pod is its status:
the container's ``terminated`` reason and exit code (``OOMKilled`` is the kernel's OOM killer in
the container's cgroup), the pod's ``reason`` (``Evicted``) or its ``DisruptionTarget`` condition
(a preemption), the job's ``DeadlineExceeded`` (its activeDeadlineSeconds), and the termination
message (the container's last log lines, with ``terminationMessagePolicy: FallbackToLogsOnError``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from launcher.engines.k8s.manifests import COMPLETION_INDEX_ANNOTATION
from launcher.verdict import Verdict, classify, first_failure, signal_name

Obj = dict[str, Any]
# Pod conditions DisruptionTarget carries these reasons when the pod was taken away, not failed.
PREEMPTION_REASONS = frozenset({"PreemptionByScheduler", "PreemptionByKubeScheduler", "EvictionByEvictionAPI",
                                "TerminationByKubelet", "DeletionByTaintManager"})


def _terminated(pod: Obj) -> Obj | None:
    """The first container that terminated with a nonzero code (or a reason), this run or the last."""
    for status in pod.get("status", {}).get("containerStatuses", []):
        for key in ("state", "lastState"):
            done = status.get(key, {}).get("terminated")
            if done and (done.get("exitCode") or done.get("reason") not in (None, "Completed")):
                return dict(done)
    return None


def _where(pod: Obj) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    index = meta.get("annotations", {}).get(COMPLETION_INDEX_ANNOTATION)
    node = f"node {index}, " if index is not None else ""
    return f"{node}pod {meta.get('name', '?')} on {spec.get('nodeName', '?')}"


def pod_verdict(pod: Obj) -> Verdict | None:
    """One pod's verdict, or None for a pod that did not fail."""
    status = pod.get("status", {})
    where = _where(pod)
    disruption = next((c for c in status.get("conditions", []) if c.get("type") == "DisruptionTarget"
                       and c.get("status") == "True"), None)
    if status.get("reason") == "Evicted" or (disruption and disruption.get("reason") in PREEMPTION_REASONS):
        why = status.get("message") or (disruption or {}).get("message") or status.get("reason", "")
        reason = status.get("reason") or (disruption or {}).get("reason", "")
        return Verdict("preempted", None, where, 143, detail=f"{reason}: {why}".strip(": "))
    done = _terminated(pod)
    if done is None:
        return None
    code = int(done.get("exitCode", 0))
    signal = signal_name(code - 128) if code > 128 else None
    reason = str(done.get("reason", ""))
    verdict = classify(None, where, code, signal, str(done.get("message", "")),
                       oom_killer="the kernel's OOM killer (OOMKilled)" if reason == "OOMKilled" else "")
    return replace(verdict, detail=verdict.detail or (reason if reason not in ("Error", "") else ""))


def _first_finished(pods: list[Obj]) -> list[Obj]:
    # kubectl's times (2026-12-02T15:35:24Z) sort as they happened.
    def finished(pod: Obj) -> str:
        done = _terminated(pod) or {}
        return str(done.get("finishedAt") or pod.get("status", {}).get("startTime") or "~")
    return sorted(pods, key=finished)


def job_verdict(job: Obj, pods: list[Obj]) -> Verdict | None:
    """The job's verdict from its object (``kubectl get job -o json``) and its pods (``get pods -o json``)."""
    verdicts = []
    for order, pod in enumerate(_first_finished(pods)):
        verdict = pod_verdict(pod)
        if verdict is not None:
            name = pod.get("metadata", {}).get("name", "")
            verdicts.append(replace(verdict, at=float(order), logs=f"kubectl logs {name}"))
    first = first_failure(verdicts)
    deadline = next((c for c in job.get("status", {}).get("conditions", [])
                     if c.get("status") == "True" and c.get("reason") == "DeadlineExceeded"), None)
    if deadline is not None:
        detail = f"DeadlineExceeded: {deadline.get('message', 'the job ran past its activeDeadlineSeconds')}"
        base = first or Verdict("timeout", None, f"job {job.get('metadata', {}).get('name', '?')}", 143)
        return replace(base, klass="timeout", detail=detail)
    return first
