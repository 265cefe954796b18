"""The program's check mode and the launcher's preflight: a refused input stops everything with one line, exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.preflight import ProgramFacts, check_writable, parse_report, refusal_line, unwritable, world_sizes
from launcher.spec import Entrypoint, JobSpec, NodeRange
from tests.conftest import REPO, gangrun

CHECKED = REPO / "tests" / "scripts" / "check_mode.py"


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert not result.stdout, result.stdout
    return lines[0]


def test_every_world_size_of_an_elastic_range_is_checked() -> None:
    spec = JobSpec(Entrypoint("train", True), nnodes=NodeRange(1, 3), nproc_per_node=2)
    assert world_sizes(spec) == [2, 4, 6]
    assert world_sizes(JobSpec(Entrypoint("train", True), nproc_per_node="auto")) == []


def test_the_report_is_the_last_json_line_with_its_key_and_names_what_sets_each_folder() -> None:
    out = 'noise\n{"other": 1}\n{"gangrun_check": 1, "writes": {"output_dir": "r", "checkpoint.dir": "s3://b/c"}, ' \
          '"dataloader_workers": 4}\n'
    assert parse_report(out) == ProgramFacts(("r", "s3://b/c"), 4, ("output_dir", "checkpoint.dir"))
    assert parse_report('{"gangrun_check": 1, "writes": ["a"]}') == ProgramFacts(("a",), 0, ("a",))
    assert parse_report("no report") == ProgramFacts()


def test_the_programs_own_error_prefix_is_dropped() -> None:
    assert refusal_line("warning\ntrain: error: --config: nope\n") == "--config: nope"
    assert refusal_line("") == "no message"


def test_a_folder_is_writable_where_its_nearest_existing_parent_is(tmp_path: Path) -> None:
    assert unwritable(tmp_path / "not" / "yet") is None
    (tmp_path / "file").write_text("x")
    assert unwritable(tmp_path / "file" / "sub") == f"'{tmp_path / 'file'}' is a file, not a folder"
    facts = ProgramFacts((str(tmp_path / "file"), "s3://bucket/x"), 0, ("checkpoint.dir", "output_dir"))
    with pytest.raises(ValueError, match=r"^checkpoint.dir: .* is a file, not a folder; point checkpoint.dir at"):
        check_writable(facts)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("mount_options, problem", [("size=1m,ro", "is on a read-only filesystem"),
                                                    ("size=64k", "is full")])
def test_a_checkpoint_folder_on_a_read_only_or_full_filesystem_stops_the_run_before_it_starts(
        mount_options: str, problem: str, gangrun_env: dict[str, str], tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(disk)], check=True)
    try:
        if "ro" not in mount_options:
            # Fill it: what is left is less than a checkpoint's metadata.
            subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'fill'}", "bs=4k"], capture_output=True)
        result = gangrun("run", "--nproc-per-node", "2", "-m", "train", "--config", "digits",
                         f"output_dir={tmp_path / 'run'}", f"checkpoint.dir={disk / 'ckpt'}",
                         env=gangrun_env, cwd=tmp_path, timeout=60)
        line = one_error(result)
        assert line.startswith(f"gangrun: error: checkpoint.dir: '{disk}' {problem}"), line
        assert not (tmp_path / "run").exists() and not (tmp_path / "gangrun-home").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["render", "--target", "slurm"],
                                     ["render", "--target", "k8s"]])
def test_a_config_typo_is_refused_by_every_command_before_anything_runs(
        command: list[str], gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = gangrun(*command, "--nproc-per-node", "2", "-m", "train", "--config", "nope",
                     env=gangrun_env, cwd=tmp_path, timeout=60)
    line = one_error(result)
    assert line.startswith("gangrun: error: -m train: refused its input: --config: 'nope' is not a preset"), line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "gangrun-home").exists()


def test_a_batch_that_cannot_split_over_one_size_of_an_elastic_range_is_refused(
        gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = gangrun("render", "--target", "slurm", "--nnodes", "1:2", "--nproc-per-node", "2", "-m", "train",
                     "--config", "digits", env=gangrun_env, cwd=tmp_path, timeout=60)
    assert "cannot be split into micro-batches of 32 on 4 ranks" in one_error(result)


@pytest.mark.multiprocess
def test_a_users_program_opts_in_and_its_refusal_is_one_line(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    refused = gangrun("run", "--program-check", str(CHECKED), "--steps", "0", env=gangrun_env, cwd=tmp_path)
    assert one_error(refused) == ("gangrun: error: " + str(CHECKED) + ": refused its input: --steps: 0 is not "
                                  "positive; use 1 or more; nothing was started or submitted")
    # Without the opt-in the same program is only looked for, never run before its run.
    ran = gangrun("run", str(CHECKED), "--steps", "0", env=gangrun_env, cwd=tmp_path)
    assert ran.returncode == 0 and "trained 0 steps on rank 0" in ran.stdout, ran.stderr
