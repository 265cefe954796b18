"""Options only the Kubernetes engine reads (rendered by launcher.engines.k8s.manifests)."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.options import option

KINDS = ("job", "jobset", "trainjob", "pytorchjob")


@dataclass(frozen=True)
class K8sOptions:
    """Which workload kind to render, and what its pods get beyond the job spec."""

    namespace: str | None = option(None, help="namespace the objects go to", default_text="kubectl's current one")
    kind: str = option("job", metavar="|".join(KINDS),
                       help="job: Indexed Job + headless Service, no operator; jobset: JobSet; trainjob: "
                            "Kubeflow Trainer v2.3; pytorchjob: the legacy Kubeflow v1 operator")
    service_account: str | None = option(None, metavar="NAME", help="service account the pods run as",
                                         default_text="the namespace's default")
    node_selector: dict[str, str] = option(flag="--node-selector", metavar="KEY=VALUE", default_factory=dict,
                                           help="a node label the pods must land on; repeat for more")
    tolerations: dict[str, str] = option(flag="--toleration", metavar="KEY=EFFECT", default_factory=dict,
                                         help="a taint the pods tolerate (operator Exists), e.g. "
                                              "nvidia.com/gpu=NoSchedule; repeat for more")
    cpu: str | None = option(None, metavar="QUANTITY", help="CPUs each pod requests, e.g. 32 or 500m")
    memory: str | None = option(None, metavar="QUANTITY", help="memory each pod requests and is limited to, "
                                                               "e.g. 512Gi")
    # The container runtime's default /dev/shm of 64 MB starves DataLoader workers.
    shm_size: str = option("8Gi", metavar="QUANTITY", help="size of the memory-backed /dev/shm every pod gets")
    checkpoint_pvc: str | None = option(None, metavar="NAME",
                                        help="a ReadWriteMany PersistentVolumeClaim mounted on every pod at "
                                             "--checkpoint-mount")
    checkpoint_mount: str = option("/checkpoints", metavar="PATH", help="where --checkpoint-pvc is mounted")
    secret_env: dict[str, str] = option(flag="--secret-env", metavar="VAR=SECRET:KEY", default_factory=dict,
                                        help="a variable read from a Secret by reference, never inline (e.g. "
                                             "object-store credentials); repeat for more")
    checkpoint_budget_s: int = option(120, metavar="S",
                                      help="seconds a rank may take to save after SIGTERM; the pod's grace "
                                           "period is set above it")
    gang_restarts: int = option(0, metavar="N", help="restarts of the whole gang after a failure (JobSet "
                                                     "maxRestarts; the Indexed Job's backoff limit per node)")
    runtime: str = option("torch-distributed", metavar="NAME",
                          help="TrainJob only: the (Cluster)TrainingRuntime to run on")
