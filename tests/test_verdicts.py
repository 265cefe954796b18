"""A verdict for every failure: golden lines for every class, the evidence each engine has, and real runs
that fail each way under `gangrun run` (an OOM kill inside a memory cgroup, an exception, a bad input,
a peer killed in a collective)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.agent.guard import split_agent_args
from launcher.agent.oom import killed_pids, memory_cgroup, oom_kill_count
from launcher.agent.torchlog import fold_torchrun_failure_lines
from launcher.compat import worker_stderrs
from launcher.engines.k8s.verdict import job_verdict
from launcher.engines.slurm.accounting import parse_sacct, slurm_verdict
from launcher.spec import Entrypoint, JobSpec
from launcher.torchrun import agent_flags
from launcher.verdict import (
    Verdict,
    classify,
    first_failure,
    read_verdicts,
    render,
    render_line,
    traceback_tail,
    write_verdict,
)
from tests.conftest import BIN, REPO, gangrun

DATA = REPO / "tests" / "data" / "verdicts"
SCRIPTS = REPO / "tests" / "scripts"

TRACE = """\
[rank1]: Traceback (most recent call last):
[rank1]:   File "/work/train.py", line 40, in <module>
[rank1]:     main()
[rank1]:   File "/work/train.py", line 31, in main
[rank1]:     batch = next(loader)
[rank1]:   File "/work/data.py", line 12, in __next__
[rank1]:     return self.rows[self.i]
[rank1]: KeyError: 'label'
"""
CUDA_OOM = ("Traceback (most recent call last):\n  File \"/w/t.py\", line 3, in <module>\n    x = torch.empty(n)\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity"
            " of 79.15 GiB of which 1.2 GiB is free.\n")
GLOO = ("Traceback (most recent call last):\n  File \"/w/t.py\", line 3, in <module>\n    dist.barrier()\n"
        "RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:22220\n")
NCCL = ("Traceback (most recent call last):\n  File \"/w/t.py\", line 3, in <module>\n    dist.all_reduce(t)\n"
        "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited\n")


# -- golden lines, one per class -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, line", [
    (dict(code=2, trace="error: config: train.lr 'fast' is not a number\n"),
     "gangrun: failed: bad input: rank 1 on node2 exited 2: error: config: train.lr 'fast' is not a number"),
    (dict(code=1, trace=TRACE),
     "gangrun: failed: exception in user code: rank 1 on node2 exited 1: KeyError: 'label'"),
    (dict(code=137, signal="SIGKILL", oom_killer="the kernel's OOM killer"),
     "gangrun: failed: out of memory: rank 1 on node2 killed by SIGKILL (the kernel's OOM killer)"),
    (dict(code=1, trace=CUDA_OOM),
     "gangrun: failed: out of memory: rank 1 on node2 exited 1: torch.OutOfMemoryError: CUDA out of memory. "
     "Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.15 GiB of which 1.2 GiB is free."),
    (dict(code=1, trace="Traceback (most recent call last):\n  File \"a.py\", line 1\nMemoryError\n"),
     "gangrun: failed: out of memory: rank 1 on node2 exited 1: MemoryError"),
    (dict(code=1, trace=GLOO),
     "gangrun: failed: communication error: rank 1 on node2 exited 1: RuntimeError: "
     "[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:22220"),
    (dict(code=1, trace=NCCL),
     "gangrun: failed: communication error: rank 1 on node2 exited 1: torch.distributed.DistBackendError: "
     "NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited"),
    (dict(code=75), "gangrun: stopped: preemption: rank 1 on node2 exited 75"),
    (dict(code=137, signal="SIGKILL"), "gangrun: failed: killed by a signal: rank 1 on node2 killed by SIGKILL"),
    (dict(code=7, trace="saving...\n"), "gangrun: failed: nonzero exit: rank 1 on node2 exited 7: saving..."),
])
def test_every_class_has_its_line(kwargs: dict, line: str) -> None:
    verdict = classify(1, "node2", **kwargs)
    assert render_line(verdict) == line
    assert render_line(verdict.with_logs("/runs/x/console.log")) == line + "; logs: /runs/x/console.log"


def test_a_hang_reuses_the_watchdogs_line_and_a_time_limit_names_slurm() -> None:
    hang = Verdict("hang", 1, "node2", 124, detail="rank 1 (node2) stuck 61 s in stall_here(); stacks in /o/hang-1/")
    assert render(hang) == ("gangrun: failed: hang: rank 1 (node2) stuck 61 s in stall_here(); stacks in /o/hang-1/; "
                            "exit 124")
    timeout = Verdict("timeout", None, "node(s) node1", 143, signal="SIGTERM", detail="Slurm state TIMEOUT")
    assert render_line(timeout) == "gangrun: failed: time limit: node(s) node1 killed by SIGTERM (Slurm state TIMEOUT)"


def test_the_tail_is_the_tracebacks_last_lines_rank_prefixed() -> None:
    verdict = classify(1, "node2", 1, trace="noise\n" + TRACE.replace("[rank1]: ", "[rank1]: [rank1]: "))
    assert render(verdict).splitlines() == [
        '[rank1]:   File "/work/train.py", line 31, in main',
        "[rank1]:     batch = next(loader)",
        '[rank1]:   File "/work/data.py", line 12, in __next__',
        "[rank1]:     return self.rows[self.i]",
        "[rank1]: KeyError: 'label'",
        "gangrun: failed: exception in user code: rank 1 on node2 exited 1: KeyError: 'label'",
    ]
    # Only the last traceback counts, and what follows its exception line is not part of it.
    assert traceback_tail(GLOO + "\nsome later line\n" + TRACE)[-1] == "KeyError: 'label'"
    assert traceback_tail(TRACE + "gangrun: bye\n")[-1] == "KeyError: 'label'"
    assert traceback_tail("no traceback here\n") == ()


def test_the_first_cause_is_named_over_the_peers_that_died_of_it(tmp_path: Path) -> None:
    # The survivor's gloo error is seen first by the clock; the killed peer is still the cause.
    comm = classify(0, "node1", 1, trace=GLOO, at=10.0)
    stopped = classify(2, "node1", 143, signal="SIGTERM", at=10.0)
    killed = classify(1, "node2", 137, signal="SIGKILL", at=11.0)
    for node, verdict in enumerate((comm, stopped, killed)):
        write_verdict(tmp_path, node, verdict)
    first = first_failure(read_verdicts(tmp_path))
    assert first is not None and first.rank == 1 and first.klass == "signal"
    assert render_line(first) == ("gangrun: failed: killed by a signal: rank 1 on node2 killed by SIGKILL; failed "
                                  "after it: rank 0 (communication error), rank 2 (killed by a signal)")
    assert first_failure([]) is None and first_failure([comm]) == comm


# -- the evidence: the OOM killer, torchrun's logs and files, Slurm's steps, a pod's status ----------

def test_memory_cgroup_is_found_on_v1_and_v2_and_its_oom_kills_counted(tmp_path: Path) -> None:
    v1 = tmp_path / "memory" / "slurm" / "job_42"
    v1.mkdir(parents=True)
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert memory_cgroup("5:cpu:/\n4:memory:/slurm/job_42\n0::/\n", tmp_path) == v1
    assert oom_kill_count(v1) == 3
    v2 = tmp_path / "kubepods" / "pod1"
    v2.mkdir(parents=True)
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\noom_group_kill 0\n")
    assert memory_cgroup("0::/kubepods/pod1\n", tmp_path) == v2
    assert oom_kill_count(v2) == 1
    assert memory_cgroup("0::/nowhere\n", tmp_path) is None and oom_kill_count(tmp_path) is None


def test_the_kernel_log_names_the_killed_pid() -> None:
    kmsg = ("6,1234,589516687,-;oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/g,task=python3,pid=7064,uid=0\n"
            "3,1235,589516711,-;Memory cgroup out of memory: Killed process 7064 (python3) total-vm:4167928kB\n"
            "6,1236,589516800,-;Out of memory: Killed process 99 (java)\n")
    assert killed_pids(kmsg) == {7064, 99}


def test_torchruns_failure_lines_are_folded_and_others_kept() -> None:
    logger = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    folder = fold_torchrun_failure_lines()
    try:
        assert not folder.filter(logger.makeRecord(logger.name, logging.ERROR, "f", 1,
                                                   "failed (exitcode: %s) local_rank: %s", (1, 1), None))
        assert not folder.filter(logger.makeRecord(logger.name, logging.WARNING, "f", 1,
                                                   "Sending process %s closing signal %s", (12, "SIGTERM"), None))
        assert folder.filter(logger.makeRecord(logger.name, logging.WARNING, "f", 1,
                                               "Unable to shutdown process %s via %s", (12, "SIGTERM"), None))
        assert folder.folded[0] == "failed (exitcode: 1) local_rank: 1" and folder in logger.filters
    finally:
        logger.removeFilter(folder)


def test_worker_stderrs_are_found_by_local_rank() -> None:
    base = "/logs/node0/run_x/attempt_1"
    found = worker_stderrs([f"{base}/0/stdout.log", f"{base}/1/stdout.log", f"{base}/0/stderr.log",
                            f"{base}/1/stderr.log"])
    assert found == {0: Path(f"{base}/0/stderr.log"), 1: Path(f"{base}/1/stderr.log")}


def test_slurm_shows_the_failed_steps_own_code_not_the_allocations() -> None:
    # The allocation says 1:0 (the batch script's) and DerivedExitCode 0:9; the step says 137.
    rows = parse_sacct((DATA / "sacct-step-failed.txt").read_text())
    agent = classify(3, "node2", 137, signal="SIGKILL", oom_killer="the kernel's OOM killer")
    verdict = slurm_verdict(rows, [agent], "/jobs/43.node2.log")
    assert verdict is not None and render_line(verdict) == (
        "gangrun: failed: out of memory: rank 3 on node2 killed by SIGKILL (the kernel's OOM killer); "
        "logs: /jobs/43.node2.log")
    # No agent spoke: the step's own code, 137, never the allocation's 1.
    alone = slurm_verdict(rows, [], "/jobs/43.*.log")
    assert alone is not None and alone.code == 137 and alone.host == "node(s) node[1-2]"


def test_slurm_preempted_and_timed_out_jobs_are_classed_by_their_state() -> None:
    preempted = slurm_verdict(parse_sacct((DATA / "sacct-preempted.txt").read_text()), [], "/jobs/42.*.log")
    assert preempted is not None and render_line(preempted) == (
        "gangrun: stopped: preemption: node(s) node[1-2] killed by SIGTERM (Slurm state PREEMPTED); "
        "logs: /jobs/42.*.log")
    timeout = slurm_verdict(parse_sacct((DATA / "sacct-timeout.txt").read_text()), [], "x")
    assert timeout is not None and timeout.klass == "timeout" and "Slurm state TIMEOUT" in render_line(timeout)
    assert slurm_verdict(parse_sacct("45|COMPLETED|0:0|0:0|node1\n45.0|COMPLETED|0:0|0:0|node1\n"), [], "x") is None


def test_the_agents_verdict_stands_while_sacct_still_says_running() -> None:
    # The controller ended the job; slurmdbd has not caught up.
    agent = classify(0, "node1", 1, trace="Traceback (most recent call last):\n  File x\nValueError: boom")
    lagging = slurm_verdict(parse_sacct("46|RUNNING|0:0|0:0|node1\n46.0|RUNNING|0:0|0:0|node1\n"), [agent], "l")
    assert lagging == agent.with_logs("l")
    assert slurm_verdict(parse_sacct("46|RUNNING|0:0|0:0|node1\n"), [], "l") is None


@pytest.mark.parametrize("case, line", [
    ("k8s-oomkilled", "gangrun: failed: out of memory: node 1, pod llm-1-fghij on gpu-node-b killed by SIGKILL "
                      "(the kernel's OOM killer (OOMKilled)); logs: kubectl logs llm-1-fghij"),
    ("k8s-evicted", "gangrun: stopped: preemption: node 0, pod llm-0-abcde on gpu-node-a exited 143 (Evicted: The "
                    "node was low on resource: ephemeral-storage.); logs: kubectl logs llm-0-abcde"),
    ("k8s-deadline", "gangrun: failed: time limit: job llm exited 143 (DeadlineExceeded: Job was active longer than "
                     "specified deadline)"),
    ("k8s-exception", "gangrun: failed: exception in user code: node 1, pod llm-1-fghij on gpu-node-b exited 1: "
                      "ValueError: shapes (4, 3) and (2,) do not match; logs: kubectl logs llm-1-fghij"),
])
def test_kubernetes_verdicts_from_recorded_pod_status(case: str, line: str) -> None:
    recorded = json.loads((DATA / f"{case}.json").read_text())
    verdict = job_verdict(recorded["job"], recorded["pods"])
    assert verdict is not None and render_line(verdict) == line



def test_the_local_launcher_takes_the_verdict_and_the_agent_only_writes_its_own() -> None:
    spec = JobSpec(Entrypoint("train", True))
    settings, rest = split_agent_args([*agent_flags(spec, 30, "/s", verdict_to_launcher=True), "-m", "x"])
    assert settings.verdict_to_launcher and settings.status_dir == "/s" and rest == ["-m", "x"]
    assert not split_agent_args(agent_flags(spec, 30))[0].verdict_to_launcher


# -- real runs under `gangrun run` ---------------------------------------------------------------

def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


def run_id(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"gangrun: run (local-\S+)", result.stderr)
    assert found, result.stderr
    return found.group(1)


def same_line_everywhere(result: subprocess.CompletedProcess[str], env: dict[str, str], cwd: Path) -> str:
    """The run's last line, which `gangrun status` and `gangrun logs` show too."""
    line = last_line(result)
    job = run_id(result)
    assert gangrun("status", job, env=env, cwd=cwd).stdout.strip().splitlines()[-1] == line
    assert gangrun("logs", job, env=env, cwd=cwd).stdout.strip().splitlines()[-1] == line
    assert line.endswith(f"; logs: {env['GANGRUN_HOME']}/local/{job.removeprefix('local-')}/console.log")
    return line


@pytest.mark.multiprocess
@pytest.mark.parametrize("fail_as, code, line", [
    ("raise", 1, r"gangrun: failed: exception in user code: rank 1 on \S+ exited 1: KeyError: \"no such column: "
                 r"'label'\"; failed after it: rank 0 \((communication error|killed by a signal)\); logs: "),
    ("input", 2, r"gangrun: failed: bad input: rank 1 on \S+ exited 2: error: config: train.lr 'fast' is not a "
                 r"number; use e.g. train.lr=3e-4; failed after it: rank 0 \((communication error|killed by a signal)\)"
                 r"; logs: "),
])
def test_an_exception_and_a_bad_input_are_named(gangrun_env: dict[str, str], tmp_path: Path, fail_as: str, code: int,
                                                line: str) -> None:
    result = gangrun("run", "--nproc-per-node", "2", str(SCRIPTS / "raise_or_exit.py"),
                     env={**gangrun_env, "FAIL_AS": fail_as}, cwd=tmp_path, timeout=120)
    assert result.returncode == code, result.stderr
    assert re.match(line, same_line_everywhere(result, gangrun_env, tmp_path)), result.stderr[-3000:]
    # The traceback's tail precedes the agent's line; torchrun's own failure lines are folded into it.
    if fail_as == "raise":
        assert "[rank1]: KeyError: \"no such column: 'label'\"\ngangrun: failed: exception" in result.stderr
    assert "failed (exitcode:" not in result.stderr and "closing signal" not in result.stderr


DIGITS = ["-m", "train", "--config", "digits", "train.eval_every=0", "metrics.plot=false", "checkpoint.every=1000"]
MEMORY_V1 = Path("/sys/fs/cgroup/memory")


@pytest.fixture
def memory_cgroup_v1() -> Iterator[Path]:
    """A fresh v1 memory cgroup (root only), removed afterwards; the test moves its run's processes in."""
    if os.geteuid() != 0 or not os.access(MEMORY_V1, os.W_OK):
        pytest.skip("needs root and a writable cgroup v1 memory controller at /sys/fs/cgroup/memory")
    group = MEMORY_V1 / f"gangrun-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as err:
        pytest.skip(f"cannot make a memory cgroup: {err}")
    yield group
    deadline = time.monotonic() + 30
    while True:
        try:
            group.rmdir()
            return
        except OSError:
            # Its last processes are still exiting.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_in_cgroup(group: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`gangrun args` started inside ``group``: it, its agent and its ranks are charged there."""
    def enter() -> None:
        (group / "cgroup.procs").write_text(str(os.getpid()))
    return subprocess.run([str(BIN / "gangrun"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300, preexec_fn=enter)


@pytest.mark.multiprocess
def test_a_rank_killed_by_the_kernels_oom_killer_is_named(memory_cgroup_v1: Path, gangrun_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    group = memory_cgroup_v1
    # What two ranks need, measured: a short run in the cgroup with no limit yet.
    measured = run_in_cgroup(group, ["run", "--nproc-per-node", "2", *DIGITS, f"output_dir={tmp_path}/m",
                                     "train.max_steps=5"], gangrun_env, tmp_path)
    assert measured.returncode == 0, measured.stderr[-3000:]
    limit = int((group / "memory.max_usage_in_bytes").read_text()) + (256 << 20)
    (group / "memory.limit_in_bytes").write_text(str(limit))
    if (group / "memory.memsw.limit_in_bytes").exists():
        (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
    kills = oom_kill_count(group)
    # Rank 1 takes as much again as the whole limit after step 3.
    env = {**gangrun_env, "GANGRUN_TEST_ALLOCATE_MB": f"1:3:{limit >> 20}"}
    result = run_in_cgroup(group, ["run", "--nproc-per-node", "2", *DIGITS, f"output_dir={tmp_path}/o",
                                   "train.max_steps=100"], env, tmp_path)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr[-3000:]
    assert (oom_kill_count(group) or 0) > (kills or 0)
    line = same_line_everywhere(result, gangrun_env, tmp_path)
    assert re.match(r"gangrun: failed: out of memory: rank 1 on \S+ killed by SIGKILL \(the kernel's OOM killer",
                    line), result.stderr[-3000:]


@pytest.mark.multiprocess
def test_a_peer_killed_in_a_collective_is_named_over_the_ranks_that_lost_it(gangrun_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    script = tmp_path / "kill_rank1.py"
    # Rank 1 dies of SIGKILL while rank 0 waits for it in a barrier; rank 0's gloo error comes a moment after.
    script.write_text("import os, signal, time\nimport torch.distributed as dist\ndist.init_process_group('gloo')\n"
                      "if dist.get_rank() == 1:\n    time.sleep(1)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                      "dist.barrier()\n")
    result = gangrun("run", "--nproc-per-node", "2", str(script), env=gangrun_env, cwd=tmp_path, timeout=120)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr
    line = same_line_everywhere(result, gangrun_env, tmp_path)
    # Not the OOM killer: nothing said so, so the line says no more than the signal.
    assert re.match(r"gangrun: failed: killed by a signal: rank 1 on \S+ killed by SIGKILL(; failed after it: rank 0 "
                    r"\((communication error|killed by a signal)\))?; logs: ", line), result.stderr[-3000:]
