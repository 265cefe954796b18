"""The hang watchdog's rules, the stack parser and the verdict, on fixed inputs and a clock passed in."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from launcher.agent.guard import AgentSettings, split_agent_args
from launcher.agent.hang import RankView, culprits, hang_verdict
from launcher.agent.progress import RankProgress, parse_record, read_rank
from launcher.agent.requeue import RequeuePolicy, stopped_status
from launcher.agent.sampler import MIN_SAMPLES, StackSampler
from launcher.agent.stacks import Stack, main_thread, parse_threads
from launcher.agent.watchdog import HangTimeout, Watchdog, allowance
from train.progress import Progress, percentile

PY_SPY_WAITING = """Process 11: python -u -m train
Python v3.11.7 (/usr/bin/python3.11)

Thread 11 (idle): "MainThread"
    _engine_run_backward (torch/autograd/graph.py:1072)
    backward (torch/autograd/__init__.py:395)
    Tensor.backward (torch/_tensor.py:623)
    train_step (train/loop.py:181)
    fit (train/loop.py:70)
    wrapper (torch/distributed/elastic/multiprocessing/errors/__init__.py:380)
    <module> (train/__main__.py:33)
Thread 12 (idle): "checkpoint-commit_0"
    _worker (concurrent/futures/thread.py:81)
"""
FAULTHANDLER_STALLED = """Thread 0x00007f6e51ee86c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 982 in run

Current thread 0x00007f6e52c49b80 (most recent call first):
  File "/work/user/job.py", line 8 in stall_here
  File "/usr/lib/python3/site-packages/torch/distributed/elastic/multiprocessing/errors.py", line 380 in wrapper
  File "/work/user/job.py", line 9 in <module>
"""


def stack(rank: int, text: str, state: str = "S") -> Stack:
    return Stack(rank, 100 + rank, text, "py-spy", state, main_thread(parse_threads(text)))


def test_hang_timeout_forms() -> None:
    assert HangTimeout.parse("auto") == HangTimeout("auto") and HangTimeout.parse("off") == HangTimeout("off")
    assert HangTimeout.parse("90") == HangTimeout("fixed", 90.0) and str(HangTimeout.parse("2.5")) == "2.5"
    for bad in ("0", "-3", "soon", ""):
        with pytest.raises(ValueError):
            HangTimeout.parse(bad)


def test_allowances_follow_the_observed_step_times_and_the_phase() -> None:
    auto, fixed = HangTimeout("auto"), HangTimeout("fixed", 4.0)
    assert allowance(auto, "train", step_p95=0.05, longest=0) == 60.0
    assert allowance(auto, "train", step_p95=30.0, longest=0) == 150.0
    # The first step may compile: it counts as startup.
    assert allowance(auto, "train", step_p95=0.0, longest=0, steps_done=0) == 600.0
    assert allowance(auto, "save", step_p95=0.1, longest=100.0) == 500.0
    assert allowance(auto, "eval", step_p95=0.1, longest=1.0) == 300.0
    assert allowance(fixed, "train", 0.1, 0) == 4.0 and allowance(fixed, "startup", 0.1, 0) == 40.0
    assert allowance(fixed, "eval", 0.1, 0) == 20.0
    assert allowance(HangTimeout("off"), "train", 0.1, 0) is None
    assert "train max(60 s, 5 x p95 step time)" in auto.describe()
    assert fixed.describe().startswith("hang watchdog: train 4 s without progress, startup 40 s")


def report(rank: int, updated: float, step: int = 5, phase: str = "train", pid: int | None = None) -> RankProgress:
    return RankProgress(rank, updated, step, phase, pid if pid is not None else 100 + rank, "node1",
                        {"step_p95": 0.01, "steps": 5.0})


def test_a_rank_past_its_allowance_is_silent_and_a_restarted_ranks_old_file_is_not_its_own() -> None:
    dog = Watchdog(HangTimeout("fixed", 4.0), {0: 100, 1: 101}, started=1000.0)
    fresh = {0: report(0, 1010.0), 1: report(1, 1003.0)}
    assert dog.check(fresh, last_output=0.0, now=1006.0) == []
    silent = dog.check(fresh, last_output=0.0, now=1008.0)
    assert [s.rank for s in silent] == [1] and silent[0].seconds == pytest.approx(5.0)
    # A report from another process (the previous attempt's) is nobody's progress in this one.
    assert dog.current({0: report(0, 1010.0, pid=55)}) == {}


def test_a_program_that_reports_nothing_is_judged_by_its_output_and_only_with_a_fixed_timeout() -> None:
    silent_program = {0: None, 1: None}
    fixed = Watchdog(HangTimeout("fixed", 4.0), {0: 100, 1: 101}, started=1000.0)
    assert fixed.check(silent_program, last_output=1003.0, now=1006.0) == []
    assert [s.rank for s in fixed.check(silent_program, last_output=1003.0, now=1008.0)] == [0, 1]
    auto = Watchdog(HangTimeout("auto"), {0: 100}, started=1000.0)
    assert auto.check({0: None}, last_output=0.0, now=99999.0) == []


def test_stacks_of_both_tools_parse_to_the_main_thread() -> None:
    waiting, stalled = stack(0, PY_SPY_WAITING), stack(1, FAULTHANDLER_STALLED)
    assert [f.function for f in waiting.main][:2] == ["_engine_run_backward", "backward"]
    assert waiting.waiting and str(waiting.own_frame) == "train_step() at loop.py:181"
    # torchrun's @record wrapper further out is no wait: the program's own frame is innermost.
    assert not stalled.waiting and stalled.own_frame is not None and stalled.own_frame.function == "stall_here"


def view(rank: int, text: str, step: int = 5, state: str = "S", host: str = "node1") -> RankView:
    return RankView.of(stack(rank, text, state), report(rank, 1000.0, step), host)


def test_the_culprit_is_the_stopped_rank_then_the_one_behind_then_the_one_not_waiting() -> None:
    waiting = view(0, PY_SPY_WAITING)
    assert culprits([waiting, view(1, FAULTHANDLER_STALLED)]) == [1]
    assert culprits([waiting, view(1, PY_SPY_WAITING, state="T")]) == [1]
    # Reports lag a step: one behind is no evidence, two are.
    assert culprits([waiting, view(1, PY_SPY_WAITING, step=4)]) == []
    assert culprits([waiting, view(1, PY_SPY_WAITING, step=3)]) == [1]
    assert culprits([waiting, view(1, PY_SPY_WAITING)]) == []


def test_the_verdict_names_the_culprit_its_host_step_and_frame_and_the_waiters(tmp_path: Path) -> None:
    # Views travel between nodes as JSON: the verdict is the same from either side.
    remote = RankView.from_json(json.loads(json.dumps(view(1, FAULTHANDLER_STALLED, host="node2").to_json())))
    verdict = hang_verdict([remote, view(0, PY_SPY_WAITING)], 62.0, tmp_path / "hang-1")
    assert verdict.culprits == [1]
    assert verdict.line == (f"gangrun: hang: rank 1 (node2) stuck 62 s in stall_here() at job.py:8 after step 5 "
                            f"(train); rank 0 waits in _engine_run_backward(); stacks in {tmp_path}/hang-1/")
    everyone = hang_verdict([view(0, PY_SPY_WAITING), view(1, PY_SPY_WAITING)], 9.0, None)
    assert "all waiting on their peers" in everyone.line and everyone.line.endswith("stacks above")


def test_the_programs_progress_file_is_what_the_agent_reads(tmp_path: Path) -> None:
    progress = Progress({"GANGRUN_PROGRESS_DIR": str(tmp_path), "RANK": "3"})
    progress.phase("train", 7)
    for _ in range(3):
        progress.step_done(8, step_s=0.02, compute_s=0.015)
    progress.write()
    record = read_rank(str(tmp_path), 3)
    assert record is not None and (record.rank, record.step, record.phase) == (3, 8, "train")
    assert record.stats["step_p95"] == pytest.approx(0.02) and record.stats["wait_s"] == pytest.approx(0.015)
    # A shorter record over a longer one: the padding keeps it one valid JSON line.
    progress.fields["out"] = "x" * 600
    progress.write()
    progress.fields.clear()
    progress.phase("eval")
    again = read_rank(str(tmp_path), 3)
    assert again is not None and again.phase == "eval" and again.out is None
    progress.close()


def test_the_one_line_protocol_needs_only_step_and_phase() -> None:
    record = parse_record(2, json.dumps({"step": 12, "phase": "train"}), mtime=50.0)
    assert record is not None and (record.step, record.phase, record.updated, record.pid) == (12, "train", 50.0, None)
    assert parse_record(2, "", mtime=1.0) is None and parse_record(2, "[1]", mtime=1.0) is None


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 95) == 0.0 and percentile([3.0], 50) == 3.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0


def test_agent_flags_come_before_torchruns() -> None:
    settings, rest = split_agent_args(["--hang-timeout=30", "--stop-grace=90", "--status-dir=/j/s", "--nnodes=1",
                                       "-m", "train", "--hang-timeout=5"])
    assert settings == AgentSettings(HangTimeout("fixed", 30.0), 90, "/j/s")
    assert rest == ["--nnodes=1", "-m", "train", "--hang-timeout=5"]


def test_after_a_stop_the_workers_codes_say_what_it_meant() -> None:
    assert stopped_status([0, 0])[0] == 0
    assert stopped_status([75, -15])[0] == 75
    assert stopped_status([-15, -15])[0] == 75
    assert stopped_status([2, -15])[0] == 2


def test_sampled_stacks_name_the_rank_that_rarely_waits() -> None:
    sampler = StackSampler()
    for i in range(MIN_SAMPLES):
        assert sampler.verdict() is None
        sampler.add({0: stack(0, PY_SPY_WAITING), 1: stack(1, FAULTHANDLER_STALLED if i else PY_SPY_WAITING),
                     2: stack(2, PY_SPY_WAITING)})
    line = sampler.verdict()
    assert line is not None and line.startswith("gangrun: straggler (sampled stacks): rank 1 waited on its peers "
                                                "in 20% of 5 samples, the other ranks in 100%")
    even = StackSampler()
    for _ in range(MIN_SAMPLES):
        even.add({0: stack(0, PY_SPY_WAITING), 1: stack(1, PY_SPY_WAITING)})
    assert even.verdict() is None


def test_only_failures_that_are_all_stops_end_the_run_instead_of_restarting() -> None:
    policy = RequeuePolicy()
    assert policy.all_stopped([75, 75])
    # A killed rank, and its peer that torchrun then SIGTERMed and that exited 75: a crash, restart it.
    assert not policy.all_stopped([-9, 75])
    assert not policy.all_stopped([-15]) and not policy.all_stopped([])
    policy.note_notice(int(signal.SIGUSR2), None)
    # After the notice, a script without a handler dies of it, its peer of the lost peer: requeue both.
    assert policy.all_stopped([-12, 75]) and policy.all_stopped([-12, 1])
