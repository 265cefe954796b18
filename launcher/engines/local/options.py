"""Options only a local run reads."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import SpecError
from launcher.options import option
from launcher.spec import JobSpec


@dataclass(frozen=True)
class LocalOptions:
    """How `gangrun run` supervises the node agents it starts on this machine."""

    stop_grace_s: int = option(30, flag="--stop-grace", metavar="S",
                               help="seconds the agents get after Ctrl-C, SIGTERM or a failed node to stop "
                                    "their workers (who save a checkpoint) before they are killed")

    def validate(self, spec: JobSpec) -> None:
        if self.stop_grace_s < 1:
            raise SpecError("local.stop_grace_s", f"{self.stop_grace_s} seconds", "use 1 or more")
