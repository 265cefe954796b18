"""The hang verdict: from every rank's progress and stack, on every node, the culprit in one line.

The culprit is, in this order: a rank stopped by a signal (process state T); the ranks not waiting
on their peers while the others wait in a collective; the ranks two or more steps behind the others
(reports may lag a step: they are written at most every 50 ms). When all wait, the line says so,
naming each rank's collective when they differ. Each node's agent
sums up its own ranks as RankViews; the nodes exchange them through the rendezvous store, so every
node prints the same verdict over all ranks.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.agent.progress import RankProgress
from launcher.agent.stacks import Stack, is_library

# Reports lag by up to a step; a rank is behind when its step trails the newest by this many.
BEHIND_STEPS = 2


@dataclass(frozen=True)
class RankView:
    """One rank as the verdict sees it: where it is, and what its stack says."""

    rank: int
    host: str
    step: int | None
    phase: str | None
    stopped: bool
    waiting: bool
    has_stack: bool
    where: str
    caller: str
    innermost: str

    @classmethod
    def of(cls, stack: Stack, record: RankProgress | None, host: str) -> RankView:
        frame = stack.own_frame or stack.innermost
        outer = stack.main[stack.main.index(frame) + 1:] if frame is not None else []
        caller = next((str(f) for f in outer if not is_library(f.file)), "")
        return cls(stack.rank, host, record.step if record else None, record.phase if record else None,
                   stack.stopped, stack.waiting, bool(stack.main), str(frame) if frame else "", caller,
                   stack.innermost.function if stack.innermost else "")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> RankView:
        return cls(**value)


@dataclass(frozen=True)
class HangReport:
    """What the agent prints and writes when it calls a hang."""

    culprits: list[int]
    line: str
    folder: Path | None


def culprits(views: list[RankView]) -> list[int]:
    stopped = [v.rank for v in views if v.stopped]
    if stopped:
        return stopped
    waiting = [v.rank for v in views if v.waiting]
    busy = [v.rank for v in views if not v.waiting and v.has_stack]
    if waiting and busy:
        return busy
    steps = {v.rank: v.step for v in views if v.step is not None}
    if steps and min(steps.values()) <= max(steps.values()) - BEHIND_STEPS:
        return sorted(r for r, s in steps.items() if s == min(steps.values()))
    return []


def _describe(view: RankView, silent_s: float) -> str:
    what = "stopped by a signal (state T)" if view.stopped else "stuck"
    where = f"in {view.where}" if view.where else "at an unknown place (no stack)"
    at = f" after step {view.step}" if view.step is not None else ""
    phase = f" ({view.phase})" if view.phase else ""
    return f"rank {view.rank} ({view.host}) {what} {silent_s:.0f} s {where}{at}{phase}"


def hang_verdict(views: list[RankView], silent_s: float, folder: Path | None) -> HangReport:
    """The one line naming the culprit(s), the waiting ranks and where the stacks are."""
    views = sorted(views, key=lambda v: v.rank)
    guilty = culprits(views)
    others = [v for v in views if v.rank not in guilty]
    if guilty:
        parts = [", ".join(_describe(v, silent_s) for v in views if v.rank in guilty)]
        if others:
            names = ", ".join(sorted({f"{v.innermost}()" for v in others if v.innermost}))
            plural = len(others) > 1
            parts.append(f"rank{'s' if plural else ''} {', '.join(str(v.rank) for v in others)} "
                         f"wait{'' if plural else 's'} in {names or 'a collective'}")
    else:
        hosts = ", ".join(sorted({v.host for v in views}))
        waits = {v.innermost for v in views}
        if len(waits) > 1:
            # Different collectives on different ranks: the ranks took different paths through the program.
            why = "mismatched collectives: " + ", ".join(
                f"rank {v.rank} in {v.innermost}() from {v.where}" + (f" ({v.caller})" if v.caller else "")
                for v in views)
        else:
            why = "all waiting on their peers: a collective some rank never entered, or a lost peer"
        parts = [f"no progress for {silent_s:.0f} s on ranks {', '.join(str(v.rank) for v in views)} ({hosts}), "
                 + why]
        step = next((v for v in views if v.step is not None), None)
        if step is not None:
            parts[0] += f", after step {step.step}" + (f" ({step.phase})" if step.phase else "")
    where = f"stacks in {folder}/" if folder is not None else "stacks above"
    return HangReport(guilty, "gangrun: hang: " + "; ".join([*parts, where]), folder)


def evidence_folder(records: dict[int, RankProgress], fallback: str | None, called_at: float) -> Path:
    """``<output_dir>/hang-<time the hang was called>``: where the program said its output goes, else
    the fallback (the job's status folder) or the working directory. Every node names the same one."""
    out = next((r.out for _, r in sorted(records.items()) if r.out), None) or fallback or os.getcwd()
    return Path(out) / time.strftime("hang-%Y%m%d-%H%M%S", time.localtime(called_at))


def write_evidence(folder: Path, report_line: str, stacks: dict[int, Stack], records: dict[int, RankProgress]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rank, stack in stacks.items():
        record = records.get(rank)
        header = (f"# rank {rank} pid {stack.pid} state {stack.state} via {stack.source}; "
                  f"last progress: {record.to_json() if record else 'none'}\n")
        (folder / f"rank{rank}.txt").write_text(header + stack.text)
    (folder / "verdict.txt").write_text(report_line + "\n")
