"""One contract, defined once per side: launcher/contract.py, train/contract.py and the shipped files agree.

Exit codes (0, 2 bad input, 75 requeue), the notice signal and the rank prefix cross the boundary
between the launcher, the training program, Slurm and Kubernetes; a value spelled anywhere else
could drift, so the code is also searched for stray literals.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

import launcher.contract as lc
import train.contract as tc
from tests.conftest import REPO

SHIPPED_SBATCH = REPO / "slurm" / "train.sbatch"
MANIFESTS = sorted((REPO / "k8s").glob("*.yaml"))


def test_both_sides_agree() -> None:
    assert (lc.EXIT_OK, lc.EXIT_BAD_INPUT, lc.EXIT_REQUEUE) == (tc.EXIT_OK, tc.EXIT_BAD_INPUT, tc.EXIT_REQUEUE)
    assert lc.NOTICE_SIGNAL == tc.NOTICE_SIGNAL
    assert (lc.PROGRESS_DIR_ENV, lc.STACK_SIGNAL, lc.STOP_SIGNALS) == (tc.PROGRESS_DIR_ENV, tc.STACK_SIGNAL,
                                                                       tc.STOP_SIGNALS)
    assert lc.NOTICE_SIGNAL in tc.STOP_SIGNALS
    assert (lc.CHECK_ENV, lc.CHECK_WORLD_SIZES_ENV, lc.CHECK_REPORT_KEY, lc.EXPECTED_WORLD_ENV,
            lc.PG_TIMEOUT_ENV) == (tc.CHECK_ENV, tc.CHECK_WORLD_SIZES_ENV, tc.CHECK_REPORT_KEY,
                                   tc.EXPECTED_WORLD_ENV, tc.PG_TIMEOUT_ENV)
    assert lc.SHIPPED_PROGRAM == "train" and (REPO / lc.SHIPPED_PROGRAM / "__main__.py").is_file()
    assert lc.rank_of(lc.LOG_PREFIX_TEMPLATE.replace("${rank}", "12") + "hello") == 12
    assert lc.rank_of("gangrun: agent line") is None


def test_the_plain_sbatch_script_speaks_the_contract() -> None:
    text = SHIPPED_SBATCH.read_text()
    notice = lc.NOTICE_SIGNAL.name.removeprefix("SIG")
    assert f"#SBATCH --signal={notice}@" in text
    assert f'if [ "$status" -eq {lc.EXIT_REQUEUE} ]; then' in text
    assert shlex.quote(f"--log-line-prefix-template={lc.LOG_PREFIX_TEMPLATE}") in text
    assert f'"$python" {lc.SAFE_PATH_FLAG} -m {lc.AGENT_MODULE} \\' in text


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_shipped_manifest_speaks_the_contract(path: Path) -> None:
    text = path.read_text()
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    assert f"--log-line-prefix-template={lc.LOG_PREFIX_TEMPLATE}" in text
    assert f"- {lc.SAFE_PATH_FLAG}\n" in text and f"- {lc.AGENT_MODULE}\n" in text
    for obj in objects:
        for rule in _failure_rules(obj):
            assert rule["onExitCodes"]["values"] == [lc.EXIT_BAD_INPUT], path


def _failure_rules(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    jobs = [spec] if obj["kind"] == "Job" else [r["template"]["spec"] for r in spec.get("replicatedJobs", [])]
    return [rule for job in jobs for rule in job.get("podFailurePolicy", {}).get("rules", []) if "onExitCodes" in rule]


def _python_files(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if p.name != "contract.py")


@pytest.mark.parametrize("package", ["launcher", "train"])
def test_the_requeue_code_and_notice_signal_are_spelled_only_in_the_contract(package: str) -> None:
    for path in _python_files(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == lc.EXIT_REQUEUE and type(node.value) is int:
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno}: {lc.EXIT_REQUEUE} outside {package}/contract.py")
            if isinstance(node, ast.Attribute) and node.attr == lc.NOTICE_SIGNAL.name:
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno}: {node.attr} outside {package}/contract.py")
