"""A finished Slurm job's verdict: the failed step's own exit code and the job's state, from sacct's step rows.

The allocation's ExitCode is the batch script's, which says little of the step that failed (its
``exit "$status"`` after a requeue, a step killed by a signal): only the step rows and
DerivedExitCode carry the step's own code (NVIDIA/NVFlare#5093). The agents' own verdicts (rank,
host, traceback) come from the job's status folder; the state decides preemption and time limits.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace

from launcher.verdict import Verdict, classify, first_failure, signal_name

SACCT_FORMAT = "JobID,State,ExitCode,DerivedExitCode,NodeList"
# The job's state, when it decides the class whatever the ranks said.
STATE_CLASSES = {"PREEMPTED": "preempted", "REQUEUED": "preempted", "TIMEOUT": "timeout",
                 "DEADLINE": "timeout", "OUT_OF_MEMORY": "oom"}
OK_STATES = frozenset({"COMPLETED", "RUNNING", "PENDING", "COMPLETING"})


@dataclass(frozen=True)
class StepRow:
    """One row of ``sacct -P``: the allocation (``42``), its batch step or a numbered step (``42.0``)."""

    job_id: str
    state: str
    code: int
    signal: int
    derived_code: int
    nodes: str

    @property
    def is_step(self) -> bool:
        step = self.job_id.partition(".")[2]
        return step.isdigit()

    @property
    def failed(self) -> bool:
        return self.state not in OK_STATES or self.code != 0 or self.signal != 0


def _code_signal(text: str) -> tuple[int, int]:
    code, _, sig = text.partition(":")
    return int(code or 0), int(sig or 0)


def parse_sacct(text: str) -> list[StepRow]:
    """``sacct -j ID --format=JobID,State,ExitCode,DerivedExitCode,NodeList -P -n`` rows; bad rows skipped."""
    rows = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 5:
            continue
        try:
            code, sig = _code_signal(fields[2])
            derived, _ = _code_signal(fields[3])
        except ValueError:
            continue
        # "CANCELLED by 0" names who cancelled; the state is its first word.
        rows.append(StepRow(fields[0], fields[1].split()[0] if fields[1] else "", code, sig, derived, fields[4]))
    return rows


def slurm_verdict(rows: list[StepRow], agents: list[Verdict], logs: str) -> Verdict | None:
    """The job's verdict: the agents' first failure, with the failed step's code and the job's state.

    None for a job that did not fail (or that sacct does not know yet).
    """
    job = next((r for r in rows if "." not in r.job_id), None)
    if job is None or not job.failed:
        # The controller can call a job ended seconds before slurmdbd's rows say so (sacct still reads
        # RUNNING): the agents' own verdicts, written before they exited, stand alone until then.
        first = first_failure(agents)
        return first.with_logs(logs) if first is not None and (job is None or job.state != "COMPLETED") else None
    steps = [r for r in rows if r.is_step and r.failed]
    step = steps[0] if steps else None
    verdict = first_failure(agents)
    if verdict is None and step is not None:
        # No agent spoke (killed with its node, or the step never started it): the step's own code.
        signal = signal_name(step.signal) if step.signal else None
        verdict = classify(None, f"node(s) {step.nodes}", step.code or (128 + step.signal), signal)
    if verdict is None:
        code = job.derived_code or job.code
        verdict = classify(None, f"node(s) {job.nodes}", code or (128 + job.signal),
                           signal_name(job.signal) if job.signal else None)
    detail = f"Slurm state {job.state}" + (f"; {verdict.detail}" if verdict.detail else "")
    klass = STATE_CLASSES.get(job.state)
    if klass is not None:
        verdict = replace(verdict, klass=klass, detail=detail)
    elif job.state != "FAILED":
        verdict = replace(verdict, detail=detail)
    if step is not None and verdict.signal is None and step.code:
        # The step's own code over the allocation's (and over an agent's guess at it).
        verdict = replace(verdict, code=step.code)
    return verdict.with_logs(logs)


def accounting_rows(job_id: str) -> list[StepRow]:
    """sacct's rows for the job and each of its steps ([] where sacct fails or is missing)."""
    try:
        proc = subprocess.run(["sacct", "-j", job_id, f"--format={SACCT_FORMAT}", "-P", "-n"],
                              capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_sacct(proc.stdout) if proc.returncode == 0 else []
