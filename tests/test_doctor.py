"""`gangrun doctor` and the preflight checks: each decision pure, then the command, the agent and
`gangrun run` on this machine, with real names, real sockets and real filesystems."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.agent.preflight import node_checks, torchrun_layout
from launcher.compat import parse_torchrun_args
from launcher.doctor import checks, probes
from launcher.doctor.cheap import NodeLayout, cheap_checks, slurm_topology_applies
from launcher.doctor.result import EXIT_CHECK_FAILED, Check, exit_code, fail, first_failure, ok, warn
from launcher.spec import NodeRange
from tests.conftest import BIN, gangrun

BAD_HOST = "no-such-host.invalid"
DIGITS = ["-m", "train", "--config", "digits", "train.max_steps=2", "metrics.plot=false"]
MIB = 1 << 20


# --- the line a user reads --------------------------------------------------------------------------------------

def test_lines_are_aligned_and_carry_the_fix_unless_ok() -> None:
    assert ok("shm", "fine").line() == "ok   shm: fine"
    assert warn("network", "2 interfaces", "set X").line() == "warn network: 2 interfaces; set X"
    assert fail("nnodes", "2 but 1", "use 1").line() == "fail nnodes: 2 but 1; use 1"
    assert Check("shm", "ok", "fine", "ignored").line() == "ok   shm: fine"
    assert fail("nnodes", "2 but 1", "use 1").preflight_line() == "gangrun: preflight: fail: nnodes: 2 but 1; use 1"


def test_exit_code_is_1_only_when_a_check_failed() -> None:
    assert exit_code([ok("a", "x"), warn("b", "y", "z")]) == 0
    found = [ok("a", "x"), fail("b", "y", "z"), fail("c", "y", "z")]
    assert exit_code(found) == EXIT_CHECK_FAILED == 1
    assert first_failure(found) == found[1]


# --- each check's decision --------------------------------------------------------------------------------------

def test_resolves() -> None:
    assert checks.check_resolves("node1", ("127.0.0.1",), None).status == "ok"
    missing = checks.check_resolves(BAD_HOST, (), "Name or service not known")
    assert missing.status == "fail" and f"'{BAD_HOST}'" in missing.detail and "--rdzv-endpoint" in missing.fix
    assert checks.check_resolves(BAD_HOST, (), "x", severity="warn").status == "warn"


@pytest.mark.parametrize("reach, status", [("local", "ok"), ("accepted", "ok"), ("refused", "ok"),
                                           ("timeout", "fail"), ("unreachable", "fail")])
def test_reachable_means_a_route_exists(reach: checks.Reach, status: str) -> None:
    assert checks.check_reachable("node0", 29500, reach).status == status


def test_port_free() -> None:
    assert checks.check_port_free("127.0.0.1", 29500, None).status == "ok"
    held = checks.check_port_free("127.0.0.1", 29500, "Address already in use")
    assert held.status == "fail" and "29500" in held.detail and "29500" in held.fix


@pytest.mark.parametrize("nnodes, allocated, status", [
    (NodeRange(2, 2), 2, "ok"), (NodeRange(2, 2), 1, "fail"), (NodeRange(1, 4), 3, "ok"), (NodeRange(2, 4), 1, "fail"),
])
def test_nnodes_against_the_allocation(nnodes: NodeRange, allocated: int, status: str) -> None:
    found = checks.check_nnodes(nnodes, allocated)
    assert found.status == status and "SLURM_NNODES" in found.detail


@pytest.mark.parametrize("text, counts", [("1", [1]), ("1(x2)", [1, 1]), ("2(x2),1", [2, 2, 1]), ("junk", [])])
def test_tasks_per_node_parses_slurms_notation(text: str, counts: list[int]) -> None:
    assert checks.tasks_per_node(text) == counts


def test_one_task_per_node() -> None:
    assert checks.check_tasks_per_node("1(x2)").status == "ok"
    assert checks.check_tasks_per_node("2").status == "fail"
    assert "--ntasks-per-node=1" in checks.check_tasks_per_node("2(x2)").fix


@pytest.mark.parametrize("visible, nproc, gpus, status, name", [
    (0, 4, 0, "ok", "gpus_per_node"), (8, 8, 8, "ok", "gpus_per_node"), (4, 4, 8, "fail", "gpus_per_node"),
    (8, 9, 8, "fail", "nproc_per_node"), (8, "auto", 8, "ok", "gpus_per_node"),
])
def test_gpus(visible: int, nproc: int | str, gpus: int, status: str, name: str) -> None:
    found = checks.check_gpus(visible, "CUDA_VISIBLE_DEVICES=x", nproc, gpus)
    assert (found.status, found.name) == (status, name)


def test_shm_need_is_processes_times_workers() -> None:
    need = 4 * 2 * checks.SHM_PER_WORKER
    assert checks.check_shm(need, 4, 2).status == "ok"
    short = checks.check_shm(need - 1, 4, 2)
    assert short.status == "warn" and f"{need // MIB} MiB" in short.detail and "--shm-size" in short.fix
    assert checks.check_shm(0, 8, 0).status == "ok"
    assert "(assumed)" in checks.check_shm(64 * MIB, 1, None).detail
    assert checks.check_shm(None, 1, 1).status == "warn"


def test_checkpoint_location() -> None:
    assert checks.check_location("/ckpt", 10 << 30, None).status == "ok"
    assert checks.check_location("/ckpt", 10 * MIB, None).status == "warn"
    assert checks.check_location("s3://b/x", None, None).status == "ok"
    refused = checks.check_location("/ckpt", 0, "No space left on device in /ckpt")
    assert refused.status == "fail" and "/ckpt" in refused.detail


def test_same_everywhere() -> None:
    assert checks.check_same_everywhere("versions", "torch", {"n1": "2.4", "n2": "2.4"}, "fix").status == "ok"
    differs = checks.check_same_everywhere("versions", "torch", {"n1": "2.4", "n2": "2.3"}, "fix")
    assert differs.status == "fail" and "n1: 2.4; n2: 2.3" in differs.detail


def test_interfaces() -> None:
    assert checks.check_interfaces({"eth0": "10.0.0.1"}, {}).status == "ok"
    two = {"eth0": "10.0.0.1", "ib0": "10.1.0.1"}
    several = checks.check_interfaces(two, {})
    assert several.status == "warn" and "eth0 10.0.0.1, ib0 10.1.0.1" in several.detail
    assert "NCCL_SOCKET_IFNAME=eth0" in several.fix and "GLOO_SOCKET_IFNAME=eth0" in several.fix
    assert checks.check_interfaces(two, {"NCCL_SOCKET_IFNAME": "ib0"}).status == "ok"


# The grammar itself is tests/test_images.py's: a value that is no reference never reaches doctor.
@pytest.mark.parametrize("image, status", [("gangrun:latest", "ok"), ("ghcr.io/me/gangrun:1.0", "ok"), (None, "warn")])
def test_image_is_set(image: str | None, status: str) -> None:
    assert checks.check_image(image).status == status


def test_kubectl() -> None:
    assert checks.check_kubectl(None, None).status == "fail"
    assert checks.check_kubectl("/usr/bin/kubectl", "refused").status == "warn"
    assert checks.check_kubectl("/usr/bin/kubectl", None).status == "ok"


def test_loopback_names() -> None:
    assert all(map(checks.is_loopback_name, ["localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]"]))
    assert not any(map(checks.is_loopback_name, ["node1", "10.0.0.1", "example.org"]))


def test_visible_gpus_from_the_environment_or_device_files(tmp_path: Path) -> None:
    assert probes.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2"}, str(tmp_path))[0] == 3
    assert probes.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, str(tmp_path))[0] == 0
    assert probes.visible_gpus({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, str(tmp_path))[0] == 0
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert probes.visible_gpus({}, str(tmp_path)) == (2, f"{tmp_path}/nvidia*")


# --- the agent's view: torchrun's own parsed arguments, this process's environment as given ------------------

def agent_args(*flags: str) -> list[str]:
    return [*flags, "-m", "train"]


def test_torchrun_layout_reads_c10d_and_static() -> None:
    c10d = torchrun_layout(parse_torchrun_args(agent_args("--nnodes=1:3", "--nproc-per-node=2", "--rdzv-backend=c10d",
                                                          "--rdzv-endpoint=node1:21000")))
    assert c10d == NodeLayout("node1", 21000, NodeRange(1, 3), 2)
    static = torchrun_layout(parse_torchrun_args(agent_args("--nnodes=1", "--nproc-per-node=auto",
                                                            "--master-addr=127.0.0.1", "--master-port=29511")))
    assert static == NodeLayout("127.0.0.1", 29511, NodeRange(1, 1), "auto")


def test_inside_an_allocation_the_agent_checks_the_node_count_unless_every_node_is_here() -> None:
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_TASKS_PER_NODE": "1"}
    args = parse_torchrun_args(agent_args("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                          "--rdzv-endpoint=localhost:21000"))
    # A rendezvous on loopback: `gangrun run` inside salloc, every node on this machine.
    assert slurm_topology_applies(torchrun_layout(args), slurm) is False
    assert first_failure(node_checks(args, slurm)) is None
    layout = NodeLayout(socket.gethostname(), 21000, NodeRange(2, 2), 1)
    failed = first_failure(cheap_checks(layout, slurm))
    assert failed is not None and failed.name == "nnodes"
    assert first_failure(cheap_checks(layout, {**slurm, "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "1(x2)"})) is None


def test_asked_for_gpus_that_are_not_visible_fail_the_agent() -> None:
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "2",
             "CUDA_VISIBLE_DEVICES": "0"}
    failed = first_failure(cheap_checks(NodeLayout(socket.gethostname(), 21000, NodeRange(1, 1), 1), slurm))
    assert failed is not None and failed.name == "gpus_per_node"


def test_an_unresolvable_host_fails_but_only_warns_in_a_pod() -> None:
    layout = NodeLayout(BAD_HOST, 29500, NodeRange(2, 2), 1)
    assert cheap_checks(layout, {})[0].status == "fail"
    assert cheap_checks(layout, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})[0].status == "warn"


# --- probes against this machine ------------------------------------------------------------------------------

@pytest.fixture
def listening() -> Iterator[int]:
    """A port something listens on, as another job's store would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_bind_and_reach_probes(listening: int) -> None:
    assert probes.bind_error(listening) is not None
    assert probes.reach("127.0.0.1", listening) == "accepted"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert probes.bind_error(free) is None
    assert probes.reach("127.0.0.1", free) == "refused"
    assert probes.is_local(("127.0.0.1",)) and probes.is_local(probes.resolve(socket.gethostname())[0])


def test_location_probe_leaves_nothing_and_works_before_the_folder_exists(tmp_path: Path) -> None:
    probe = probes.probe_location(str(tmp_path / "not" / "yet"))
    assert probe.error is None and probe.free and probe.free > 0
    assert list(tmp_path.iterdir()) == []
    assert probes.probe_location(f"file://{tmp_path}").error is None


# --- the command ----------------------------------------------------------------------------------------------

def doctor(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return gangrun("doctor", *args, env=env, cwd=cwd, timeout=120)


def statuses(stdout: str) -> dict[str, str]:
    return {line.split()[1].rstrip(":"): line.split()[0] for line in stdout.splitlines()
            if line.split()[:1] in (["ok"], ["warn"], ["fail"])}


def test_doctor_here_is_all_ok(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = doctor("--checkpoint", str(tmp_path / "ckpt"), env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    found = statuses(result.stdout)
    assert {"rdzv_endpoint", "shm", "checkpoint", "versions", "network"} <= set(found), result.stdout
    assert "fail" not in found.values(), result.stdout
    assert result.stdout.splitlines()[-1].startswith("gangrun doctor (local): ")


def test_doctor_asks_the_program_for_its_folders(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = doctor(*DIGITS, f"output_dir={tmp_path / 'out'}", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"checkpoint: {tmp_path / 'out'} is writable" in result.stdout, result.stdout


def test_doctor_names_a_host_that_does_not_resolve(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = doctor("--rdzv-endpoint", f"{BAD_HOST}:29500", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"fail rdzv_endpoint: host '{BAD_HOST}' does not resolve" in result.stdout


def test_doctor_names_a_port_in_use(gangrun_env: dict[str, str], tmp_path: Path, listening: int) -> None:
    result = doctor("--rdzv-endpoint", f"127.0.0.1:{listening}", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"fail rdzv_port: port {listening} on 127.0.0.1 is in use" in result.stdout


def test_doctor_bad_flag_is_bad_input(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    assert doctor("--no-such-flag", env=gangrun_env, cwd=tmp_path).returncode == 2
    # A flag of another target is refused as everywhere else, naming it.
    refused = doctor("--partition", "gpu", env=gangrun_env, cwd=tmp_path)
    assert refused.returncode == 2 and "--partition" in refused.stderr


def test_doctor_for_kubernetes_checks_the_image(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    # A value that is no image reference at all is bad input, as for render and submit.
    result = doctor("--target", "k8s", "--image", "Not An Image", env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 2 and "image: 'Not An Image' is not an image reference" in result.stderr
    unset = doctor("--target", "k8s", env=gangrun_env, cwd=tmp_path)
    assert "warn image: no --image" in unset.stdout


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_doctor_fails_a_full_checkpoint_disk(gangrun_env: dict[str, str], tmp_path: Path, small_disk: Path) -> None:
    with (small_disk / "filler").open("wb") as out, pytest.raises(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    result = doctor("--checkpoint", str(small_disk / "ckpt"), env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert f"fail checkpoint: cannot write, read and delete a file at {small_disk / 'ckpt'}" in result.stdout
    assert "No space left on device" in result.stdout


def test_doctor_fails_a_read_only_checkpoint_disk(gangrun_env: dict[str, str], tmp_path: Path,
                                                  small_disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = doctor("--checkpoint", str(small_disk), env=gangrun_env, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert "Read-only file system" in result.stdout, result.stdout


# --- the same checks stop `gangrun run` and the agent before anything starts ------------------------------------

def leftovers(marker: str) -> list[str]:
    """Processes whose command line names ``marker`` (this test's own folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(proc.name)
            except OSError:
                continue
    return found


def assert_stopped_before_start(result: subprocess.CompletedProcess[str], tmp_path: Path, *named: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    # The one error line; before it only the spec's settings as every run prints them (its timeouts).
    errors = [line for line in result.stderr.splitlines() if not line.startswith("gangrun: timeouts: ")]
    assert len(errors) == 1 and errors[0].startswith("gangrun: error: "), result.stderr
    assert all(word in errors[0] for word in named), errors[0]
    assert not (tmp_path / "out").exists() and leftovers(str(tmp_path)) == []
    assert not list((tmp_path / "gangrun-home").glob("local/*"))


def test_run_stops_on_an_unresolvable_host(gangrun_env: dict[str, str], tmp_path: Path) -> None:
    result = gangrun("run", "--rdzv-endpoint", f"{BAD_HOST}:29500", "--nproc-per-node", "1", *DIGITS,
                     f"output_dir={tmp_path / 'out'}", env=gangrun_env, cwd=tmp_path, timeout=120)
    assert_stopped_before_start(result, tmp_path, BAD_HOST)


def test_run_stops_on_a_port_in_use(gangrun_env: dict[str, str], tmp_path: Path, listening: int) -> None:
    result = gangrun("run", "--rdzv-endpoint", f"127.0.0.1:{listening}", "--nproc-per-node", "1", *DIGITS,
                     f"output_dir={tmp_path / 'out'}", env=gangrun_env, cwd=tmp_path, timeout=120)
    assert_stopped_before_start(result, tmp_path, str(listening))


def test_agent_stops_before_its_rendezvous_on_an_unresolvable_host(gangrun_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "python"), "-P", "-m", "launcher.agent", "--nnodes=2", "--nproc-per-node=1",
                             "--rdzv-backend=c10d", f"--rdzv-endpoint={BAD_HOST}:29500", *DIGITS,
                             f"output_dir={tmp_path / 'out'}"],
                            env=gangrun_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"gangrun: preflight: fail: rdzv_endpoint: host '{BAD_HOST}' does not resolve" in result.stderr
    assert "rendezvous" not in result.stderr.replace("--rdzv-endpoint", "")
