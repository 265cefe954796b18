"""The Kubernetes target's kubectl side: the exact commands, status lines, rank filtering, real kubectl errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from launcher.engines.k8s.kubectl import (
    apply_argv,
    delete_argv,
    exec_argv,
    filter_rank,
    logs_argv,
    pods_argv,
    summarize_status,
)
from launcher.jobs import JobHandle

BIN = Path(sys.executable).parent


def handle(kind: str) -> JobHandle:
    return JobHandle(target="k8s", native_id="ml.llm", name="llm", extra={"kind": kind, "namespace": "ml"})


def test_apply_reads_the_manifest_from_stdin_in_the_given_or_current_namespace():
    assert apply_argv("ml") == ["kubectl", "--namespace", "ml", "apply", "-f", "-"]
    assert apply_argv(None) == ["kubectl", "apply", "-f", "-"]


def test_cancel_deletes_the_workload_and_the_jobs_service():
    assert delete_argv(handle("job"))[-2:] == ["jobs.batch/llm", "services/llm"]
    assert delete_argv(handle("jobset"))[-1] == "jobsets.jobset.x-k8s.io/llm"
    assert delete_argv(handle("trainjob"))[-1] == "trainjobs.trainer.kubeflow.org/llm"
    assert delete_argv(handle("pytorchjob"))[-1] == "pytorchjobs.kubeflow.org/llm"


def test_status_and_stacks_read_each_running_pods_agent_through_kubectl_exec():
    assert pods_argv(handle("job")) == ["kubectl", "--namespace", "ml", "get", "pods", "-l", "gangrun/job=llm",
                                        "--field-selector=status.phase=Running", "-o",
                                        "jsonpath={.items[*].metadata.name}"]
    # The pod's agent publishes its ranks where the rendered command told it to (--status-dir).
    assert exec_argv(handle("trainjob"), "llm-node-0-0", "stacks") == [
        "kubectl", "--namespace", "ml", "exec", "llm-node-0-0", "-c", "node", "--",
        "python", "-P", "-m", "launcher.ranks", "stacks", "/tmp/gangrun-status"]
    assert "--status-dir=/tmp/gangrun-status" in (Path(__file__).parent.parent / "k8s" / "job.yaml").read_text()


def test_logs_come_from_every_pod_with_prefixes():
    argv = logs_argv(handle("jobset"), follow=True)
    assert argv[:6] == ["kubectl", "--namespace", "ml", "logs", "-l", "gangrun/job=llm"]
    assert "--prefix" in argv and "--follow" in argv


def test_rank_filter_reads_past_kubectls_pod_prefix():
    lines = ["[pod/llm-0-x/trainer] [rank0]: step 1", "[pod/llm-1-y/trainer] [rank3]: step 1",
             "[pod/llm-1-y/trainer] gangrun: rank 3 failed first"]
    assert list(filter_rank(iter(lines), 3)) == ["[pod/llm-1-y/trainer] [rank3]: step 1"]
    assert list(filter_rank(iter(lines), None)) == lines


def test_status_is_the_last_true_condition_or_counts():
    failed = {"status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"},
                                        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]}}
    assert summarize_status(failed) == "Failed (PodFailurePolicy)"
    assert summarize_status({"status": {"active": 2, "ready": 1}}) == "Running active=2 ready=1"
    assert summarize_status({}) == "Pending"


def test_submit_without_a_reachable_cluster_is_one_line_and_saves_no_handle(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
""")
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig),
           "GANGRUN_HOME": str(tmp_path / "gangrun")}
    proc = subprocess.run([sys.executable, "-m", "launcher", "submit", "--target", "k8s", "--image",
                           "registry.example/gangrun:1.0", "-m", "train"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("gangrun: error: kubectl:") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "gangrun" / "jobs").exists()
