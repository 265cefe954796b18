"""What every engine provides, so the CLI, profiles and handles treat them alike.

``render`` is pure: the exact argv or text a run or submission would use, for dry runs and golden
tests. A cluster engine also submits and hands back a JobHandle that later ``status``, ``logs``
and ``cancel`` calls find again (see launcher.jobs).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from launcher.jobs import JobHandle
from launcher.spec import JobSpec

# JobSpec fields every engine honours; each engine adds the ones it reads beyond them.
CORE_FIELDS = frozenset({"name", "nnodes", "nproc_per_node", "max_restarts", "env", "hang_timeout",
                         "program_check", "rdzv_join_timeout", "rdzv_last_call_timeout", "store_timeout",
                         "pg_timeout"})


class Engine(Protocol):
    """An engine: its name (the ``--target`` value and profile table), its options, what it reads."""

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    @property
    def options(self) -> type[Any]:
        """The dataclass of this engine's own options (fields made with launcher.options.option)."""

    @property
    def reads(self) -> frozenset[str]:
        """The JobSpec fields this engine honours; a flag for any other is refused, never ignored."""

    @property
    def program_is_here(self) -> bool:
        """Whether the program runs from this machine's files (the same paths on every node), so it is
        looked for and checked here; False where it lives in an image."""

    def validate(self, spec: JobSpec, options: Any) -> None:
        """Raise SpecError (one line: field, problem, fix) for anything this engine cannot run."""

    def render(self, spec: JobSpec, options: Any) -> str: ...


@runtime_checkable
class JobEngine(Engine, Protocol):
    """An engine whose jobs have handles: `gangrun status|logs|stacks|cancel JOB` find them again."""

    def status(self, handle: JobHandle) -> str:
        """The job's state, and for a running job one line per rank (step, phase, step times, last progress)."""

    def stacks(self, handle: JobHandle) -> str:
        """Every rank's Python stack, now (a running job)."""

    def logs(self, handle: JobHandle, follow: bool = False, rank: int | None = None) -> Iterator[str]: ...

    def cancel(self, handle: JobHandle) -> None: ...


@runtime_checkable
class ClusterEngine(JobEngine, Protocol):
    """An engine that submits to a scheduler."""

    def submit(self, spec: JobSpec, options: Any) -> JobHandle: ...
