"""`gangrun status|logs|cancel JOB` find the job meant: an exact id wins, a bare id never matches a suffix."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.jobs import JobHandle, load_handle


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANGRUN_HOME", str(tmp_path))
    return tmp_path


def test_a_bare_number_is_the_slurm_job_not_a_kubernetes_job_named_like_it() -> None:
    # Saved first, so the old `*-42` glob found it before slurm-42 (it sorted first).
    JobHandle(target="k8s", native_id="default.run-42", name="run-42").save()
    JobHandle(target="slurm", native_id="42", name="digits").save()
    assert load_handle("42").id == "slurm-42"
    assert load_handle("k8s-default.run-42").target == "k8s"


def test_an_exact_id_wins_over_a_bare_id() -> None:
    JobHandle(target="slurm", native_id="7", name="a").save()
    JobHandle(target="k8s", native_id="slurm-7", name="b").save()
    assert load_handle("slurm-7").target == "slurm"


def test_an_ambiguous_bare_id_is_one_line_listing_the_matches() -> None:
    JobHandle(target="slurm", native_id="5", name="a").save()
    JobHandle(target="k8s", native_id="5", name="b").save()
    with pytest.raises(SpecError) as err:
        load_handle("5")
    message = str(err.value)
    assert "\n" not in message and "slurm-5" in message and "k8s-5" in message and "ambiguous" in message


def test_no_match_says_where_it_looked() -> None:
    JobHandle(target="k8s", native_id="default.run-42", name="run-42").save()
    with pytest.raises(SpecError, match="no job '42'"):
        load_handle("42")
