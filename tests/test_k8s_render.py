"""`gangrun render --target k8s`: golden manifests, k8s/ kept in step, checks no schema makes, exit 2."""

from __future__ import annotations

import copy
import os
import shlex

import pytest

from launcher.cli import main
from launcher.contract import AGENT_MODULE, SAFE_PATH_FLAG
from launcher.engines.k8s.checks import check_objects
from launcher.engines.k8s.manifests import PET_VARS, form_of
from launcher.errors import SpecError
from tests.k8s_cases import (
    GOLDEN,
    KINDS,
    REPO,
    controller_env,
    load_stream,
    pod_container,
    render_cases,
    rendered,
    spec_for,
    workload,
)

CASES = render_cases()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("path", sorted((REPO / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_manifest_is_what_its_command_renders(path, capsys):
    text = path.read_text()
    header = [line for line in text.splitlines(keepends=True) if line.startswith("#")]
    code, out, _ = run_cli(CASES[path.stem], capsys)
    assert code == 0
    assert text == "".join(header) + out, f"{path} is stale: regenerate it with the command on its first line"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, capsys):
    code, out, _ = run_cli(CASES[case], capsys)
    assert code == 0
    path = GOLDEN / f"k8s-{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(out)
    assert out == path.read_text(), f"rendering changed; if intended, rerun with UPDATE_GOLDEN=1 and review {path}"


def test_every_kind_is_shipped():
    assert sorted(p.stem for p in (REPO / "k8s").glob("*.yaml")) == sorted(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_one_environment_contract(kind):
    """Every form's pods see the same PET_* values, and the command reads them, not literals."""
    argv = ["render", "--target", "k8s", "--kind", kind, "--name", "demo", "--nnodes", "3", "-m", "train"]
    objects = rendered(argv)
    obj = workload(objects)
    container, command = pod_container(obj)
    form = form_of(*spec_for(argv))
    for node in range(3):
        env = controller_env(obj["kind"], "demo", node, container, nnodes=3, nproc="1")
        assert env["PET_NODE_RANK"] == str(node)
        assert env["PET_MASTER_ADDR"] == form.master_addr
        assert (env["PET_NNODES"], env["PET_MASTER_PORT"]) == ("3", "29500")
    assert {"--node-rank=$(PET_NODE_RANK)", "--master-addr=$(PET_MASTER_ADDR)",
            "--master-port=$(PET_MASTER_PORT)"} <= set(command)
    assert command[:4] == ["python", SAFE_PATH_FLAG, "-m", AGENT_MODULE]


def test_master_addresses_follow_each_controllers_naming():
    names = {kind: form_of(*spec_for(["render", "--target", "k8s", "--kind", kind, "--name", "r", "--nnodes", "2",
                                     "x.py"])).master_addr
             for kind in KINDS}
    assert names == {"job": "r-0.r", "jobset": "r-node-0-0.r", "trainjob": "r-node-0-0.r", "pytorchjob": "r-master-0"}


def test_pytorchjob_has_one_master_and_a_container_named_pytorch():
    obj = workload(rendered(CASES["pytorchjob-gpu"]))
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    for replica in replicas.values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
        assert {"name": "pytorchjob-port", "containerPort": 29500, "protocol": "TCP"} in container["ports"]


def test_trainjob_patches_the_runtime_and_never_overrides():
    obj = workload(rendered(CASES["trainjob-gpu"]))
    assert "podTemplateOverrides" not in obj["spec"]
    pod = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] > 120
    assert not any(e["name"] in PET_VARS for e in obj["spec"]["trainer"].get("env", []))


def test_gpu_job_essentials():
    service, job = rendered(CASES["job-gpu"])
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 8
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    assert job["spec"]["backoffLimit"] == 3 * 4
    assert job["spec"]["activeDeadlineSeconds"] == 2 * 86400
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "access-key"}}} \
        in container["env"]
    assert {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "llm-checkpoints"}} in pod["volumes"]


def test_user_strings_cannot_inject_yaml(capsys):
    hostile = "x\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: pwn}\n"
    # The program's check mode would refuse these arguments; here they only have to reach the manifest intact.
    argv = ["render", "--target", "k8s", "--no-program-check", "--env", f"NOTE={hostile}",
            "--node-selector", f"pool={hostile}", "-m", "train", "key: value", "- item", "&anchor *ref"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    docs = load_stream(out)
    assert [d["kind"] for d in docs] == ["Service", "Job"]
    container = docs[1]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "NOTE", "value": hostile} in container["env"]
    assert container["command"][-3:] == ["key: value", "- item", "&anchor *ref"]
    assert docs[1]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": hostile}


BAD_INPUT = {
    "underscore name": ("--name my_run", "name"),
    "uppercase name": ("--name MyRun", "name"),
    "hostname too long": ("--name " + "a" * 61 + " --nnodes 100", "name"),
    "trainjob needs a leading letter": ("--kind trainjob --name 1run", "name"),
    "elastic pytorchjob": ("--kind pytorchjob --nnodes 1:4", "nnodes"),
    "bad quantity": ("--memory 16GB", "k8s.memory"),
    "bad shm quantity": ("--shm-size lots", "k8s.shm_size"),
    "toleration effect": ("--toleration nvidia.com/gpu=Never", "k8s.tolerations"),
    "secret ref": ("--secret-env TOKEN=just-a-name", "k8s.secret_env"),
    "contract variable": ("--env PET_MASTER_ADDR=elsewhere", "env"),
    "more processes than gpus": ("--gpus-per-node 2 --nproc-per-node 4", "nproc_per_node"),
    "unknown kind": ("--kind deployment", "k8s.kind"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, capsys):
    flags, field = BAD_INPUT[case]
    code, out, err = run_cli(["render", "--target", "k8s", *shlex.split(flags), "-m", "train"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"gangrun: error: {field}"), err


def test_submit_with_bad_input_applies_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GANGRUN_HOME", str(tmp_path))
    code, _, err = run_cli(["submit", "--target", "k8s", "--name", "Bad_Name", "-m", "train"], capsys)
    assert code == 2 and "name" in err
    assert not (tmp_path / "jobs").exists()


def broken(objects, edit):
    objects = copy.deepcopy(objects)
    edit(objects)
    return objects


def job_pod(objs):
    return objs[1]["spec"]["template"]["spec"]


TAMPERED = {
    "subdomain is not the service": (lambda o: job_pod(o).update(subdomain="other"), "subdomain"),
    "selector misses the pods": (lambda o: o[0]["spec"]["selector"].update({"gangrun/job": "x"}), "selector"),
    "not ready pods hidden": (lambda o: o[0]["spec"].update(publishNotReadyAddresses=False), "publishNotReady"),
    "master address edited": (lambda o: job_pod(o)["containers"][0]["env"][3].update(value="x-0.x"), "rank 0"),
    "no shm": (lambda o: job_pod(o)["containers"][0].update(volumeMounts=[]), "/dev/shm"),
    "disk-backed shm": (lambda o: job_pod(o)["volumes"][0].update(emptyDir={}), "/dev/shm"),
    "restart on failure": (lambda o: job_pod(o).update(restartPolicy="OnFailure"), "restartPolicy: Never"),
    "gpu request differs": (lambda o: job_pod(o)["containers"][0]["resources"]["requests"].update(
        {"nvidia.com/gpu": 4}), "GPU requests"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_checks_catch_what_no_schema_does(case):
    argv = CASES["job-gpu"]
    objects = rendered(argv)
    edit, words = TAMPERED[case]
    with pytest.raises(SpecError, match=words.replace("/", "/")) as err:
        check_objects(*spec_for(argv), broken(objects, edit))
    assert "\n" not in str(err.value)


def test_trainjob_override_is_refused():
    argv = CASES["trainjob-gpu"]
    objects = rendered(argv)
    objects[0]["spec"]["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}]}]
    with pytest.raises(SpecError, match="runtimePatches"):
        check_objects(*spec_for(argv), objects)


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_anchors_or_aliases(case, capsys):
    """Shared sub-objects would be dumped as &id001/*id001, which some tools and readers trip on."""
    _, out, _ = run_cli(CASES[case], capsys)
    assert "&id" not in out and "*id" not in out
