"""The start-up timeline (``$GANGRUN_TIMELINE``): written only when asked, read back into a restart's phases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launcher.contract as lc
from bench.phases import PHASES, Mark, rank_pids, reached, read_marks, recovery
from launcher.agent.timeline import mark as agent_mark
from train.progress import Progress
from train.timeline import TIMELINE_ENV, MarkedProgress, mark, progress


def test_both_sides_name_the_same_variable() -> None:
    assert lc.TIMELINE_ENV == TIMELINE_ENV


def test_nothing_is_written_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mark("up", environ={})
    agent_mark("failure seen", 0, environ={})
    assert list(tmp_path.iterdir()) == []
    assert type(progress({})) is Progress


def test_each_process_appends_one_line_per_moment(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    environ = {TIMELINE_ENV: str(path), "RANK": "1", "TORCHELASTIC_RESTART_COUNT": "2"}
    mark("up", environ)
    agent_mark("rendezvous done", 2, environ)
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["who"], first["attempt"], first["mark"]) == ("rank1", 2, "up")
    assert (second["who"], second["attempt"], second["mark"]) == ("agent", 2, "rendezvous done")
    assert first["t"] <= second["t"]


def test_a_marked_progress_marks_each_phase_and_only_the_first_step(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    report = progress({TIMELINE_ENV: str(path)})
    assert isinstance(report, MarkedProgress)
    report.phase("resume")
    report.phase("train", 10)
    report.step_done(11, 0.01, 0.005)
    report.step_done(12, 0.01, 0.005)
    assert [m.mark for m in read_marks(path)] == ["resume", "train", "first step"]


def timeline(killed_at: float, victim_exits: float = 0.0) -> list[Mark]:
    """A restart after a kill at ``killed_at``: each moment one 0.1 s after the one before, rank 1 last."""
    marks = [Mark(killed_at - 1, "rank0", 10, 0, "train"), Mark(killed_at - 1, "rank1", 11, 0, "train"),
             Mark(killed_at - 2, "agent", 9, 0, "failure seen")]
    t = killed_at + victim_exits
    for _, whose, what, which in PHASES:
        t += 0.1
        attempt = 0 if which == "killed" else 1
        if whose == "agent":
            marks.append(Mark(t, "agent", 9, attempt, what))
        else:
            marks += [Mark(t - 0.05, "rank0", 20, attempt, what), Mark(t, "rank1", 21, attempt, what)]
    # A phase entered again later (train after a save) does not move its end.
    return [*marks, Mark(t + 5, "rank0", 20, 1, "train"), Mark(t + 5, "rank1", 21, 1, "train")]


def test_the_phases_of_a_restart_end_when_the_last_rank_gets_there() -> None:
    result = recovery(timeline(100.0), killed_at=100.0, killed_attempt=0, ranks=2)
    assert list(result.phases) == [name for name, *_ in PHASES]
    assert all(seconds == pytest.approx(0.1) for seconds in result.phases.values())
    assert result.total == pytest.approx(0.1 * len(PHASES))


def test_a_moment_missing_from_the_timeline_is_named() -> None:
    marks = [m for m in timeline(100.0) if not (m.who == "rank1" and m.mark == "process group")]
    with pytest.raises(ValueError, match="no 'process group' of ranks in attempt 1"):
        recovery(marks, killed_at=100.0, killed_attempt=0, ranks=2)
    assert reached(marks, 1, "process group", ranks=2) is None


def test_the_pids_of_an_attempt_come_from_its_marks() -> None:
    assert rank_pids(timeline(100.0), 0) == {0: 10, 1: 11}
    assert rank_pids(timeline(100.0), 1) == {0: 20, 1: 21}
