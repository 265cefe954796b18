"""Offline validation of every rendered manifest: yamllint, kubernetes-validate (strict, two versions)
for built-in kinds, jsonschema against the published CRD schemas for JobSet, TrainJob, PyTorchJob."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from launcher.engines.k8s.render import dump_yaml
from tests.k8s_cases import K8S_VERSIONS, REPO, render_cases, rendered, validate_object, workload, yamllint

CASES = render_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_validates(case):
    objects = rendered(CASES[case])
    engines = [engine for obj in objects for engine in validate_object(obj)]
    # Each object was checked by a real schema: a kind nobody knows would have raised, not passed.
    assert len(engines) >= len(objects)


@pytest.mark.parametrize("case", sorted(CASES))
def test_yamllint_clean(case):
    proc = yamllint(dump_yaml(rendered(CASES[case])))
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


@pytest.mark.parametrize("path", sorted((REPO / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_files_yamllint_clean(path):
    proc = yamllint(path.read_text())
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout


def test_yamllint_catches_duplicate_keys():
    proc = yamllint("a: 1\na: 2\n")
    assert "key-duplicates" in proc.stdout


def test_strict_validation_rejects_an_unknown_job_field():
    job = copy.deepcopy(rendered(CASES["job"])[1])
    job["spec"]["podFailurePolicyy"] = job["spec"].pop("podFailurePolicy")
    for version in K8S_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(job, version, strict=True)


def test_unknown_kind_is_a_failure_not_a_pass():
    jobset = rendered(CASES["jobset"])[0]
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(jobset, K8S_VERSIONS[-1], strict=True)
    with pytest.raises(AssertionError, match="no schema"):
        validate_object({**jobset, "kind": "Deployment2"})


@pytest.mark.parametrize("kind, edit", [
    ("trainjob", lambda o: o["spec"].update(podTemplateOverrides=[{"targetJobs": [{"name": "node"}]}])),
    ("trainjob", lambda o: o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"][
        "replicatedJobs"][0]["template"]["spec"].update(restartPolicy="Never")),
    ("jobset", lambda o: o["spec"]["failurePolicy"]["rules"][0].update(action="RestartEverything")),
    ("pytorchjob", lambda o: o["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas="one")),
])
def test_crd_schemas_reject_what_the_cluster_would(kind, edit):
    obj = copy.deepcopy(workload(rendered(CASES[kind])))
    edit(obj)
    with pytest.raises(jsonschema.ValidationError):
        validate_object(obj)
