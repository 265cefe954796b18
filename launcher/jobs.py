"""Job handles that persist, so later `gangrun status|logs|cancel|list` calls find a submitted job."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher.errors import SpecError


def jobs_home() -> Path:
    """Where handles live: ``$GANGRUN_HOME/jobs`` (default ``~/.gangrun/jobs``)."""
    return Path(os.environ.get("GANGRUN_HOME", Path.home() / ".gangrun")) / "jobs"


@dataclass
class JobHandle:
    """A submitted job: gangrun's id for it, the engine and the engine's own id, and its folder."""

    target: str
    native_id: str
    name: str
    folder: str = ""
    submitted_at: float = field(default_factory=time.time)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.target}-{self.native_id}"

    def save(self) -> Path:
        home = jobs_home()
        home.mkdir(parents=True, exist_ok=True)
        path = home / f"{self.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)
        return path


def load_handle(job: str) -> JobHandle:
    """Find a handle by gangrun id (``slurm-42``), or by the engine's own id alone (``42``).

    An exact gangrun id always wins. A bare id must equal one job's engine id: never a suffix, so
    ``42`` cannot pick a Kubernetes job named ``run-42``; two jobs with that id are an error that
    lists both.
    """
    handles = list_handles()
    for handle in handles:
        if handle.id == job:
            return handle
    matches = [h for h in handles if h.native_id == job]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise SpecError("JOB", f"'{job}' is ambiguous: {', '.join(h.id for h in matches)}", "give the full id")
    raise SpecError("JOB", f"no job '{job}' in {jobs_home()}", "see `gangrun list` for known jobs")


def list_handles() -> list[JobHandle]:
    home = jobs_home()
    handles = [JobHandle(**json.loads(p.read_text())) for p in home.glob("*.json")] if home.is_dir() else []
    return sorted(handles, key=lambda h: h.submitted_at)
