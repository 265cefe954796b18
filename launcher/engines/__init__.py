"""The engines a job runs on, by name: the one registry the CLI, profiles and handles read.

Each engine is a package of its own (options and their checks, rendering, submission, state, logs).
Adding one means its package and one line here.
"""

from __future__ import annotations

from launcher.engines import k8s, local, slurm
from launcher.engines.base import ClusterEngine, Engine, JobEngine
from launcher.errors import SpecError

ENGINES: dict[str, Engine] = {engine.name: engine for engine in (local.ENGINE, slurm.ENGINE, k8s.ENGINE)}


def cluster_engines() -> dict[str, ClusterEngine]:
    """The engines `gangrun submit` can send a job to."""
    return {name: engine for name, engine in ENGINES.items() if isinstance(engine, ClusterEngine)}


def cluster_engine(name: str) -> ClusterEngine:
    engines = cluster_engines()
    if name not in engines:
        raise SpecError("target", f"'{name}' is not a cluster engine", f"use one of: {', '.join(engines)}")
    return engines[name]


def job_engine(name: str) -> JobEngine:
    """The engine a job handle belongs to (every engine's runs have handles, local ones too)."""
    engine = ENGINES.get(name)
    if not isinstance(engine, JobEngine):
        raise SpecError("JOB", f"'{name}' jobs have no handles", f"use one of: {', '.join(ENGINES)}")
    return engine
