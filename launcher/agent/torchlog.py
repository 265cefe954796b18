"""torchrun's own failure log lines, folded into the agent's verdict instead of printed raw.

torchrun logs a worker's failure (``failed (exitcode: 1) local_rank: 1 (pid: ...) of binary: ...``),
each survivor it stops (``Sending process N closing signal SIGTERM``) and a stop signal it got
(``Received 15 death signal, shutting down workers``) in its own format; the verdict line, or the
agent's own line for a stop, says the same with the rank, host, class and traceback. Every other
torchrun line (restarts, a worker that would not die) still prints: a person needs those.
"""

from __future__ import annotations

import logging
import re

# The elastic loggers' names all start so (torch.distributed.elastic.utils.logging.get_logger).
ELASTIC_LOGGERS = "torch.distributed.elastic"
FOLDED = re.compile(r"^failed \(exitcode: |^Sending process \d+ closing signal |^Received \d+ death signal, ")


class FoldFailureLines(logging.Filter):
    """Drops the lines the verdict says again, and keeps them, for a test or a debugger to see."""

    def __init__(self) -> None:
        super().__init__()
        self.folded: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if FOLDED.match(message):
            self.folded.append(message)
            return False
        return True


def fold_torchrun_failure_lines() -> FoldFailureLines:
    """Install the filter on every elastic logger created so far (they are made at import, by module).

    A filter on a logger sees only that logger's own records, not its children's, so each gets one.
    """
    folder = FoldFailureLines()
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith(ELASTIC_LOGGERS) and isinstance(logger, logging.Logger):
            logger.addFilter(folder)
    return folder
