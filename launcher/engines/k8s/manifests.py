"""Kubernetes objects for a JobSpec, built as plain data: Indexed Job, JobSet, TrainJob, PyTorchJob.

Every form starts the same container command (``python -P -m launcher.agent`` + torchrun flags) and
gives it the same environment contract, whoever injects it:

    PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT

For the Indexed Job and the JobSet we write them; the Trainer v2 torch plugin and the v1 training
operator inject them into TrainJob and PyTorchJob pods. The command reads them as ``$(PET_...)``,
which the kubelet expands from the container's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from launcher.build import DEFAULT_IMAGE
from launcher.contract import EXIT_BAD_INPUT
from launcher.engines.k8s.options import K8sOptions
from launcher.spec import JobSpec, parse_mount, time_limit_seconds
from launcher.torchrun import Rendezvous, agent_flags, agent_launch, torchrun_args

Obj = dict[str, Any]

MASTER_PORT = 29500
# Time after the checkpoint budget for torchrun to stop its workers and the pod to exit.
GRACE_MARGIN_S = 30
JOB_LABEL = "gangrun/job"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The replicated job Trainer's torch-distributed runtime names "node", and we use the same in JobSet.
NODE_GROUP = "node"
CONTAINER_NAMES = {"job": "trainer", "jobset": "trainer", "trainjob": "node", "pytorchjob": "pytorch"}
PET_VARS = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
API_VERSIONS = {
    "job": "batch/v1",
    "jobset": "jobset.x-k8s.io/v1alpha2",
    "trainjob": "trainer.kubeflow.org/v1alpha1",
    "pytorchjob": "kubeflow.org/v1",
}


@dataclass(frozen=True)
class Form:
    """What one kind produces: the rank-0 DNS name and the longest pod hostname, for the checks."""

    kind: str
    master_addr: str
    longest_hostname: str
    injects_pet: bool


def form_of(spec: JobSpec, k8s: K8sOptions) -> Form:
    """Names the controller of ``k8s.kind`` gives its pods (see each upstream's naming)."""
    name, last = spec.job_name, spec.nnodes.max - 1
    kind = k8s.kind
    if kind == "job":
        # Indexed Job pods are <job>-<index>, in the Service named by subdomain (here: the job's name).
        return Form(kind, f"{name}-0.{name}", f"{name}-{last}", injects_pet=False)
    if kind == "jobset":
        # JobSet pods are <jobset>-<replicatedJob>-<jobIndex>-<podIndex> under subdomain <jobset>.
        return Form(kind, f"{name}-{NODE_GROUP}-0-0.{name}", f"{name}-{NODE_GROUP}-0-{last}", injects_pet=False)
    if kind == "trainjob":
        return Form(kind, f"{name}-{NODE_GROUP}-0-0.{name}", f"{name}-{NODE_GROUP}-0-{last}", injects_pet=True)
    # PyTorchJob v1: pods and per-pod Services <job>-master-0 and <job>-worker-<i>.
    longest = f"{name}-worker-{last - 1}" if last > 0 else f"{name}-master-0"
    return Form(kind, f"{name}-master-0", longest, injects_pet=True)


def time_limit_s(time: str | None) -> int | None:
    """The spec's time limit (validated ``HH:MM:SS`` or ``D-HH:MM:SS``) as seconds."""
    return None if time is None else time_limit_seconds(time)


# Each pod's agent publishes its ranks here; `gangrun status|stacks` read it with kubectl exec.
POD_STATUS_DIR = "/tmp/gangrun-status"


def container_command(spec: JobSpec, k8s: K8sOptions) -> list[str]:
    """The command every pod runs: torchrun (through launcher.agent) reading the PET_* contract.

    The workers get the checkpoint budget to save after SIGTERM; a hang's stacks go to the pod log.
    """
    if spec.nnodes.elastic:
        rdzv = Rendezvous("c10d", "$(PET_MASTER_ADDR)", "$(PET_MASTER_PORT)", run_id=spec.job_name)
    else:
        rdzv = Rendezvous("static", "$(PET_MASTER_ADDR)", "$(PET_MASTER_PORT)", node_rank="$(PET_NODE_RANK)")
    flags = agent_flags(spec, k8s.checkpoint_budget_s, POD_STATUS_DIR)
    return [*agent_launch("python"), *flags, *torchrun_args(spec, rdzv)]


def pet_env(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """The contract as we write it for the Indexed Job and JobSet forms."""
    return [
        {"name": "PET_NNODES", "value": str(spec.nnodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(spec.nproc_per_node)},
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}},
        {"name": "PET_MASTER_ADDR", "value": form_of(spec, k8s).master_addr},
        {"name": "PET_MASTER_PORT", "value": str(MASTER_PORT)},
    ]


def user_env(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """The spec's variables, then each ``secret_env`` entry as a secretKeyRef (never the value)."""
    # torchrun gives workers 30 s after SIGTERM before SIGKILL unless told otherwise (torch 2.14 reads
    # this variable); the checkpoint budget is what a save at the next step boundary may take.
    env: list[Obj] = [{"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(k8s.checkpoint_budget_s)}]
    env += [{"name": key, "value": value} for key, value in spec.env.items()]
    for var, ref in k8s.secret_env.items():
        secret, _, key = ref.partition(":")
        env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def resources(spec: JobSpec, k8s: K8sOptions) -> Obj:
    """Requests and limits; GPUs are requested and limited alike (extended resources must be)."""
    requests: Obj = {}
    limits: Obj = {}
    if k8s.cpu:
        requests["cpu"] = k8s.cpu
    if k8s.memory:
        requests["memory"] = limits["memory"] = k8s.memory
    if spec.gpus_per_node:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = spec.gpus_per_node
    out: Obj = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def volumes(spec: JobSpec, k8s: K8sOptions) -> tuple[list[Obj], list[Obj]]:
    """(pod volumes, container mounts): always /dev/shm in memory, the checkpoint PVC if given, and each
    --mount as a hostPath of the node (the same folder on every node, as a bind is on Slurm)."""
    vols: list[Obj] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}]
    mounts: list[Obj] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if k8s.checkpoint_pvc:
        vols.append({"name": "checkpoints", "persistentVolumeClaim": {"claimName": k8s.checkpoint_pvc}})
        mounts.append({"name": "checkpoints", "mountPath": k8s.checkpoint_mount})
    for index, mount in enumerate(map(parse_mount, spec.mounts)):
        name = f"mount-{index}"
        vols.append({"name": name, "hostPath": {"path": mount.source, "type": "Directory"}})
        mounts.append({"name": name, "mountPath": mount.target, **({"readOnly": True} if mount.read_only else {})})
    return vols, mounts


def container_security() -> Obj:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> Obj:
    # fsGroup makes a fresh PVC writable by the image's uid 1000.
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}


def scheduling(spec: JobSpec, k8s: K8sOptions) -> Obj:
    out: Obj = {}
    if k8s.node_selector:
        out["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        out["tolerations"] = [{"key": key, "operator": "Exists", "effect": effect}
                              for key, effect in k8s.tolerations.items()]
    if k8s.service_account:
        out["serviceAccountName"] = k8s.service_account
    return out


def grace_period_s(spec: JobSpec, k8s: K8sOptions) -> int:
    return k8s.checkpoint_budget_s + GRACE_MARGIN_S


def container(spec: JobSpec, k8s: K8sOptions, env: list[Obj], port_name: str) -> Obj:
    _, mounts = volumes(spec, k8s)
    out: Obj = {
        "name": CONTAINER_NAMES[k8s.kind],
        "image": spec.image or DEFAULT_IMAGE,
        "command": container_command(spec, k8s),
        "env": env,
    }
    out["ports"] = [{"name": port_name, "containerPort": MASTER_PORT, "protocol": "TCP"}]
    res = resources(spec, k8s)
    if res:
        out["resources"] = res
    out["volumeMounts"] = mounts
    out["securityContext"] = container_security()
    return out


def pod_template(spec: JobSpec, k8s: K8sOptions, env: list[Obj], port_name: str = "rdzv",
                 subdomain: str | None = None) -> Obj:
    vols, _ = volumes(spec, k8s)
    pod: Obj = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace_period_s(spec, k8s)}
    if subdomain is not None:
        pod["subdomain"] = subdomain
    pod.update(scheduling(spec, k8s))
    pod["securityContext"] = pod_security()
    pod["containers"] = [container(spec, k8s, env, port_name)]
    pod["volumes"] = vols
    return {"metadata": {"labels": labels(spec)}, "spec": pod}


def labels(spec: JobSpec) -> dict[str, str]:
    return {JOB_LABEL: spec.job_name}


def metadata(spec: JobSpec, k8s: K8sOptions) -> Obj:
    meta: Obj = {"name": spec.job_name}
    if k8s.namespace:
        meta["namespace"] = k8s.namespace
    meta["labels"] = labels(spec)
    return meta


def pod_failure_policy(spec: JobSpec, k8s: K8sOptions) -> Obj:
    """Fail the whole Job on bad input; don't count pods evicted or preempted by the cluster."""
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER_NAMES[k8s.kind],
                                              "operator": "In", "values": [EXIT_BAD_INPUT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}


def indexed_job_spec(spec: JobSpec, k8s: K8sOptions, subdomain: str, backoff_limit: int) -> Obj:
    """One pod per node, index = node rank; one failed pod fails the Job and stops the others."""
    nodes = spec.nnodes.max
    job: Obj = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": backoff_limit,
        "podFailurePolicy": pod_failure_policy(spec, k8s),
    }
    deadline = time_limit_s(spec.time)
    if deadline is not None:
        job["activeDeadlineSeconds"] = deadline
    job["template"] = pod_template(spec, k8s, [*pet_env(spec, k8s), *user_env(spec, k8s)], subdomain=subdomain)
    return job


def headless_service(spec: JobSpec, k8s: K8sOptions) -> Obj:
    """Gives every pod a DNS name; publishNotReadyAddresses so rank 0 resolves before it is Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(spec, k8s),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(spec),
            "ports": [{"name": "rdzv", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP"}],
        },
    }


def render_job(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    # A crash on one node fails every node's pod, so each gang restart costs up to nnodes failures.
    job = {"apiVersion": API_VERSIONS["job"], "kind": "Job", "metadata": metadata(spec, k8s),
           "spec": indexed_job_spec(spec, k8s, spec.job_name, k8s.gang_restarts * spec.nnodes.max)}
    return [headless_service(spec, k8s), job]


def render_jobset(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    job_spec = indexed_job_spec(spec, k8s, spec.job_name, backoff_limit=0)
    return [{
        "apiVersion": API_VERSIONS["jobset"],
        "kind": "JobSet",
        "metadata": metadata(spec, k8s),
        "spec": {
            # Any failed Job restarts the whole gang, up to maxRestarts; bad input fails it at once.
            "failurePolicy": {
                "maxRestarts": k8s.gang_restarts,
                "rules": [{"name": "bad-input", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
            },
            "network": {"enableDNSHostnames": True, "subdomain": spec.job_name, "publishNotReadyAddresses": True},
            "replicatedJobs": [{"name": NODE_GROUP, "replicas": 1, "template": {"spec": job_spec}}],
        },
    }]


def render_trainjob(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """Kubeflow Trainer v2.3: the runtime owns the JobSet; we patch in what its default lacks.

    v2.3 takes pod changes through ``runtimePatches`` (``podTemplateOverrides`` is rejected). The
    patchable pod fields do not include restartPolicy or podFailurePolicy: those are the runtime's.
    """
    vols, mounts = volumes(spec, k8s)
    trainer: Obj = {"image": spec.image or DEFAULT_IMAGE, "command": container_command(spec, k8s),
                    "numNodes": spec.nnodes.max}
    if isinstance(spec.nproc_per_node, int):
        trainer["numProcPerNode"] = spec.nproc_per_node
    res = resources(spec, k8s)
    if res:
        trainer["resourcesPerNode"] = res
    env = user_env(spec, k8s)
    if env:
        trainer["env"] = env
    pod: Obj = {"terminationGracePeriodSeconds": grace_period_s(spec, k8s)}
    pod.update(scheduling(spec, k8s))
    pod["securityContext"] = pod_security()
    pod["volumes"] = vols
    patch_container: Obj = {"name": CONTAINER_NAMES["trainjob"], "volumeMounts": mounts,
                            "securityContext": container_security()}
    pod["containers"] = [patch_container]
    body: Obj = {"runtimeRef": {"name": k8s.runtime}}
    deadline = time_limit_s(spec.time)
    if deadline is not None:
        body["activeDeadlineSeconds"] = deadline
    body["trainer"] = trainer
    body["runtimePatches"] = [{
        "manager": "gangrun",
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": NODE_GROUP,
            "template": {"spec": {"template": {"metadata": {"labels": labels(spec)}, "spec": pod}}},
        }]}}},
    }]
    return [{"apiVersion": API_VERSIONS["trainjob"], "kind": "TrainJob", "metadata": metadata(spec, k8s), "spec": body}]


def render_pytorchjob(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """Kubeflow training-operator v1 (legacy): one Master, nnodes-1 Workers, container ``pytorch``.

    The operator reads the master port from the container port named ``pytorchjob-port``.
    """
    def template() -> Obj:
        # A fresh object per replica type: a shared one would be dumped as a YAML anchor and alias.
        return pod_template(spec, k8s, user_env(spec, k8s), port_name="pytorchjob-port")

    replicas: Obj = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template()}}
    if spec.nnodes.max > 1:
        replicas["Worker"] = {"replicas": spec.nnodes.max - 1, "restartPolicy": "Never", "template": template()}
    # Never + cleanPodPolicy Running: the first failed pod fails the job and the others are stopped.
    run_policy: Obj = {"cleanPodPolicy": "Running", "backoffLimit": k8s.gang_restarts}
    deadline = time_limit_s(spec.time)
    if deadline is not None:
        run_policy["activeDeadlineSeconds"] = deadline
    return [{
        "apiVersion": API_VERSIONS["pytorchjob"],
        "kind": "PyTorchJob",
        "metadata": metadata(spec, k8s),
        "spec": {"nprocPerNode": str(spec.nproc_per_node), "runPolicy": run_policy,
                 "pytorchReplicaSpecs": replicas},
    }]


RENDERERS = {"job": render_job, "jobset": render_jobset, "trainjob": render_trainjob, "pytorchjob": render_pytorchjob}


def build_objects(spec: JobSpec, k8s: K8sOptions) -> list[Obj]:
    """Every object ``kubectl apply`` gets for ``spec``, in apply order (Service before its pods)."""
    return RENDERERS[k8s.kind](spec, k8s)
