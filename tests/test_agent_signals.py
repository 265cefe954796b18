"""The agent in the preemption chain, with real torchrun processes: the notice reaches every process
of the step (as Slurm's proctrack sends it), the agent survives it, and exit 75 is not restarted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.multiprocess
WORKER = str(REPO / "tests" / "scripts" / "notice_exit.py")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (what proctrack/linuxproc signals)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def start_agent(launcher: list[str], tmp_path: Path, env: dict[str, str],
                max_restarts: int) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "agent.log"
    argv = [*launcher, "--standalone", "--nproc-per-node=2", f"--max-restarts={max_restarts}", "--tee=3", WORKER, "60"]
    proc = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while log.read_text().count("ready") < 2:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc, log


def notice_to_step(proc: subprocess.Popen) -> None:
    for pid in [proc.pid, *descendants(proc.pid)]:
        # A worker may have exited between listing and signalling.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)


def test_gangrun_agent_survives_the_notice_and_exits_75_without_restarting(tmp_path: Path,
                                                                            gangrun_env: dict[str, str]) -> None:
    proc, log = start_agent([sys.executable, "-m", "launcher.agent"], tmp_path, gangrun_env, max_restarts=2)
    notice_to_step(proc)
    assert proc.wait(timeout=60) == 75, log.read_text()
    text = log.read_text()
    assert text.count("saved; exiting 75") == 2
    assert "restart=1" not in text, "torchrun restarted the group after exit 75"


def test_plain_torchrun_is_killed_by_the_notice(tmp_path: Path, gangrun_env: dict[str, str]) -> None:
    """Why the agent needs its handler: torchrun has none for USR2, so the notice kills it."""
    proc, log = start_agent([sys.executable, "-m", "torch.distributed.run"], tmp_path, gangrun_env, max_restarts=0)
    workers = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGUSR2)
    assert proc.wait(timeout=60) == -signal.SIGUSR2
    # Its workers live on, orphaned: nobody is left to collect their exit codes.
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert alive, log.read_text()
    for pid in alive:
        os.kill(pid, signal.SIGKILL)


# A process that imports torch, as the agent and the ranks do, spends long enough in finalization for
# a stop signal to land there; each line stands for one side's way of deciding its exit code.
SETTLED_EXITS = {
    "unsettled": "import signal; signal.signal(signal.SIGTERM, lambda *_: None)",
    "launcher": "from launcher.contract import ignore_stop_signals; ignore_stop_signals()",
    "train": "from train.notice import NOTICE; NOTICE.install(); NOTICE.settle()",
}


@pytest.mark.parametrize("side", sorted(SETTLED_EXITS))
def test_a_stop_signal_while_the_interpreter_exits_never_turns_0_into_143(side: str,
                                                                          gangrun_env: dict[str, str]) -> None:
    code = f"import torch, sys; {SETTLED_EXITS[side]}; print('ready', flush=True); sys.exit(0)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=gangrun_env, cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    while proc.poll() is None:
        # As a cluster does when the job ends: the stop to every process, at any moment.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        time.sleep(0.0005)
    # Without a decision CPython's finalization restores SIG_DFL and the signal kills the process.
    assert proc.returncode == (-signal.SIGTERM if side == "unsettled" else 0)


def agent_patched(patch: str, program: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The agent's main() in its own process on one worker running ``program``, after ``patch`` (Python
    with ``os``, ``signal`` and the module as ``agent``) puts a real signal at one moment of its run."""
    code = (f"import os, signal, sys\nimport launcher.agent.main as agent\n{patch}\n"
            f"sys.exit(agent.main(['--standalone', '--nproc-per-node=1', *{program!r}]))\n")
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_during_the_preflight_exits_75_with_one_line(tmp_path: Path, gangrun_env: dict[str, str],
                                                             signum: signal.Signals) -> None:
    """The stop lands while the node checks run, before the agent's guard exists (the chaos suite hit
    it at random): a requeue with nothing started, not SignalException's traceback and 1."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = agent_patched(f"agent.preflight_or_exit = lambda args: os.kill(os.getpid(), {int(signum)})",
                         [WORKER, "60"], gangrun_env, cwd)
    assert proc.returncode == 75, proc.stderr
    assert f"agent got {signum.name} while starting; nothing ran, exiting 75" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(cwd.iterdir()), "nothing is written before the workers start"


def test_a_second_stop_while_the_verdict_is_written_leaves_the_workers_code(tmp_path: Path,
                                                                              gangrun_env: dict[str, str]) -> None:
    """Slurm may signal again after the workers are gone: the code they decided stands, with no traceback."""
    script = tmp_path / "exit3.py"
    script.write_text("raise SystemExit(3)\n")
    proc = agent_patched("decide = agent.failure_verdict\n"
                         "def stopped_meanwhile(*args):\n"
                         "    os.kill(os.getpid(), signal.SIGTERM)\n"
                         "    return decide(*args)\n"
                         "agent.failure_verdict = stopped_meanwhile", [str(script)], gangrun_env, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "gangrun: failed: nonzero exit: rank 0 on" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
