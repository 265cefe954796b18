"""The node agent's watch over its ranks: progress, the hang watchdog, stacks on demand, and a bounded stop.

Called from torchrun's own monitor loop (every 0.1 s; see launcher.compat.hooked_agent_class): it
reads the ranks' progress files at most every CHECK_INTERVAL_S, publishes this node's ranks to the
status folder for ``gangrun status``, answers ``gangrun stacks`` requests, and on a hang takes
every rank's stack, prints the verdict and kills the workers itself: a rank stuck in a C++ wait is
never waited on. Stopping on a signal waits for ranks that still make progress or save, up to the
stop grace, and no longer for ranks that do neither.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerState
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from launcher.agent.exchange import HangCall, NodeExchange
from launcher.agent.hang import HangReport, RankView, evidence_folder, hang_verdict, write_evidence
from launcher.agent.procstat import process_state
from launcher.agent.progress import RankProgress, read_rank
from launcher.agent.sampler import SAMPLE_INTERVAL_S, StackSampler
from launcher.agent.stacks import PY_SPY_TIMEOUT_S, dump_stacks, py_spy
from launcher.agent.watchdog import HangTimeout, Watchdog, last_output
from launcher.contract import PROGRESS_DIR_ENV
from launcher.ranks import STACKS_REQUEST

AUTO = HangTimeout("auto")
# A program that has not reported within this long of its start is one that reports nothing.
REPORT_GRACE_S = 5.0
CHECK_INTERVAL_S = 0.5
STATUS_INTERVAL_S = 1.0
# On a stop, a rank that neither reports progress nor saves for this long (or 3 x its p95 step) is stuck.
STOP_STALL_FLOOR_S = 10.0
# After a failure elsewhere, the survivors get this long to exit before they are killed: they have
# nothing to save (the restart resumes from the newest commit) and often sit in a wait for the dead.
AFTER_FAILURE_GRACE_S = 2


@dataclass(frozen=True)
class AgentSettings:
    """The agent's own flags, given before torchrun's (see launcher.torchrun.agent_launch)."""

    hang_timeout: HangTimeout = AUTO
    stop_grace_s: int = 30
    status_dir: str | None = None
    # The workers' process-group timeout (launcher.timeouts); None keeps torch's default.
    pg_timeout_s: int | None = None
    # The launcher that started this agent prints the job's verdict, from every node's (`gangrun run`):
    # the agent only writes its own to the status folder, so the console says it once.
    verdict_to_launcher: bool = False
    # The scheduler's notice reaches only the agent (podman under Slurm: the workers run in the
    # container's own process tree, outside the job step), so the agent passes it to every worker.
    pass_notice: bool = False


AGENT_FLAGS = ("--hang-timeout", "--stop-grace", "--status-dir", "--pg-timeout", "--verdict-to-launcher",
               "--pass-notice")


def split_agent_args(argv: list[str]) -> tuple[AgentSettings, list[str]]:
    """The leading agent flags (AGENT_FLAGS, ``--flag=value`` or a bare switch), and torchrun's argv."""
    values: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0].split("=", 1)[0] in AGENT_FLAGS:
        key, _, value = rest.pop(0).partition("=")
        values[key] = value
    pg_timeout = values.get("--pg-timeout")
    return AgentSettings(HangTimeout.parse(values.get("--hang-timeout", str(AUTO))),
                         int(values.get("--stop-grace", "30")), values.get("--status-dir") or None,
                         int(pg_timeout) if pg_timeout else None, "--verdict-to-launcher" in values,
                         "--pass-notice" in values), rest


def _exited(pid: int) -> bool:
    return process_state(pid) in ("Z", "?")


class NodeGuard:
    """The hang watchdog and the stop policy of one node's agent (launcher.compat.AgentHooks, in part)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        self.progress_dir = tempfile.mkdtemp(prefix="gangrun-progress-")
        os.environ[PROGRESS_DIR_ENV] = self.progress_dir
        self.hang: HangReport | None = None
        self._watchdog: Watchdog | None = None
        self._exchange: NodeExchange | None = None
        self._attempt = 0
        self.sampler = StackSampler()
        self._sampler_thread = ThreadPoolExecutor(1, thread_name_prefix="stack-sampler")
        self._sampling: Future[None] | None = None
        self._next_check = 0.0
        self._next_status = 0.0
        self._node = 0
        self._records: dict[int, RankProgress | None] = {}

    @property
    def node(self) -> int:
        """This node's rank among the nodes (its agent's group rank), once the rendezvous gave one."""
        return self._node

    def close(self) -> None:
        """The ranks' progress files go with the agent (a hang's evidence was copied to its folder)."""
        self._sampler_thread.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.progress_dir, ignore_errors=True)

    def announce(self) -> None:
        print(f"gangrun: {self.settings.hang_timeout.describe()}; stop grace {self.settings.stop_grace_s} s",
              file=sys.stderr, flush=True)

    # -- watching -----------------------------------------------------------------------------

    def watch(self, group: WorkerGroup, outputs: list[str]) -> RunResult | None:
        """One look at the ranks; a failed RunResult when they hang (after the evidence is taken)."""
        now = time.time()
        if now < self._next_check:
            return None
        self._next_check = now + CHECK_INTERVAL_S
        pids = {w.global_rank: w.id for w in group.workers if isinstance(w.id, int)}
        if self._watchdog is None or self._watchdog.pids != pids:
            self._watchdog = Watchdog(self.settings.hang_timeout, pids, now)
            self._attempt += 1
            self._exchange = NodeExchange(group.store, group.group_rank or 0, group.group_world_size or 1,
                                          self._attempt)
        assert self._exchange is not None
        self._node = group.group_rank or 0
        self._records = {rank: read_rank(self.progress_dir, rank) for rank in pids}
        self._publish(now)
        if not self._watchdog.current(self._records) and now - self._watchdog.started > REPORT_GRACE_S:
            self._sample(pids, now)
        silent = self._watchdog.check(self._records, last_output(outputs), now)
        call = self._exchange.called()
        if call is None and not silent:
            return None
        if call is None:
            call = self._exchange.call(HangCall(self._node, now, max(s.seconds for s in silent)))
        elif not silent:
            print(f"gangrun: hang called by node {call.node}: taking this node's stacks", file=sys.stderr, flush=True)
        return self._call_hang(group, call, pids)

    def _sample(self, pids: dict[int, int], now: float) -> None:
        """A program that reports nothing: its stacks now and then, for the straggler verdict, taken
        on a thread of their own so torchrun's monitor loop never waits for py-spy."""
        if now < self.sampler.next_at or py_spy() is None or (self._sampling and not self._sampling.done()):
            return
        self.sampler.next_at = now + SAMPLE_INTERVAL_S
        self._sampling = self._sampler_thread.submit(self._take_sample, dict(pids))

    def _take_sample(self, pids: dict[int, int]) -> None:
        self.sampler.add(dump_stacks(pids, self.progress_dir))
        if not self.sampler.told and (line := self.sampler.verdict()) is not None:
            self.sampler.told = True
            print(line, file=sys.stderr, flush=True)

    def summary(self) -> None:
        """At the end of the run: the sampled straggler verdict, once more with every sample."""
        if self.sampler.told and (line := self.sampler.verdict()) is not None:
            print(line, file=sys.stderr, flush=True)

    def _sample_done(self) -> None:
        """Wait for a sample in flight: py-spy attaches with ptrace, one tracer at a time, so a dump taken
        meanwhile fails and the rank has no stack ("via none")."""
        if self._sampling is not None:
            wait([self._sampling], timeout=PY_SPY_TIMEOUT_S)

    def _call_hang(self, group: WorkerGroup, call: HangCall, pids: dict[int, int]) -> RunResult:
        assert self._watchdog is not None and self._exchange is not None
        self._sample_done()
        stacks = dump_stacks(pids, self.progress_dir)
        records = self._watchdog.current(self._records)
        folder = evidence_folder(records, self.settings.status_dir, call.called_at)
        views = self._exchange.views([RankView.of(stack, records.get(rank), self.host)
                                      for rank, stack in stacks.items()])
        report = hang_verdict(views, call.silent_s, folder)
        write_evidence(folder, report.line, stacks, records)
        for rank, stack in stacks.items():
            top = " <- ".join(str(f) for f in stack.main[:4]) or "(no stack)"
            print(f"gangrun: hang: rank {rank} state {stack.state} via {stack.source}: {top}", file=sys.stderr)
        print(report.line, file=sys.stderr, flush=True)
        self.hang = report
        self._kill(list(pids.values()))
        local = {w.global_rank: w.local_rank for w in group.workers}
        return RunResult(state=WorkerState.FAILED, failures={
            rank: ProcessFailure(local_rank=local[rank], pid=pid, exitcode=-signal.SIGKILL, error_file="")
            for rank, pid in pids.items()})

    @staticmethod
    def _kill(pids: list[int], within_s: float = 5.0) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and not all(_exited(pid) for pid in pids):
            time.sleep(0.02)

    # -- status and stacks on demand ----------------------------------------------------------

    def _publish(self, now: float) -> None:
        """This node's ranks for ``gangrun status``, and an answer to a pending ``gangrun stacks``."""
        folder = self.settings.status_dir
        if folder is None or now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL_S
        ranks = [r.to_json() for r in self._current().values()]
        status = {"node": self._node, "host": self.host, "time": now, "ranks": ranks}
        try:
            write_json_atomic(Path(folder) / f"node{self._node}.json", status)
            self._answer_stacks(Path(folder))
        except OSError:
            return

    def _current(self) -> dict[int, RankProgress]:
        return self._watchdog.current(self._records) if self._watchdog is not None else {}

    def _answer_stacks(self, folder: Path) -> None:
        request = folder / STACKS_REQUEST
        if not request.is_file() or self._watchdog is None:
            return
        answer = folder / request.read_text().strip()
        done = answer / f"node{self._node}.done"
        if done.exists():
            return
        answer.mkdir(parents=True, exist_ok=True)
        self._sample_done()
        for rank, stack in dump_stacks(self._watchdog.pids, self.progress_dir).items():
            (answer / f"rank{rank}.txt").write_text(f"# rank {rank} ({self.host}) pid {stack.pid} "
                                                    f"state {stack.state} via {stack.source}\n{stack.text}")
        done.write_text(self.host)

    # -- stopping -----------------------------------------------------------------------------

    def drain(self, death_sig: signal.Signals, pids: list[int]) -> None:
        """On the agent's own stop signal: pass it on, then wait while any rank still progresses or
        saves, up to the stop grace; a rank that does neither is not waited on."""
        for pid in pids:
            try:
                os.kill(pid, death_sig)
            except ProcessLookupError:
                continue
        started = time.time()
        deadline = started + self.settings.stop_grace_s
        while time.time() < deadline and not all(_exited(pid) for pid in pids):
            time.sleep(0.1)
            if self._watchdog is not None and self._stuck(started):
                print("gangrun: after the stop signal no rank made progress or saved; not waiting for them",
                      file=sys.stderr, flush=True)
                return

    def _stuck(self, since: float) -> bool:
        assert self._watchdog is not None
        records = self._watchdog.current({r: read_rank(self.progress_dir, r) for r in self._watchdog.pids})
        alive = {r: rec for r, rec in records.items() if not _exited(self._watchdog.pids[r])}
        if not alive or len(alive) < sum(not _exited(p) for p in self._watchdog.pids.values()):
            # A rank that reports nothing gets the whole grace.
            return False
        if any(rec.phase in ("save", "teardown") for rec in alive.values()):
            return False
        step_p95 = max(rec.stats.get("step_p95", 0.0) for rec in alive.values())
        window = max(STOP_STALL_FLOOR_S, 3 * step_p95)
        newest = max(max(rec.updated for rec in alive.values()), since)
        return time.time() - newest > window


def write_json_atomic(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
