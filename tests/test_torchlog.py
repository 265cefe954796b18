"""torchrun's own failure and stop lines are folded into gangrun's verdict; its other lines still print."""

from __future__ import annotations

import logging

import pytest

from launcher.agent.torchlog import FoldFailureLines, fold_torchrun_failure_lines


@pytest.mark.parametrize("message, folded", [
    ("failed (exitcode: 1) local_rank: 1 (pid: 42) of binary: /usr/bin/python", True),
    ("Sending process 42 closing signal SIGTERM", True),
    ("Received 15 death signal, shutting down workers", True),
    ("[default] Worker group FAILED. 2/3 attempts left; will restart worker group", False),
    ("Unable to shutdown process 42 via Signals.SIGTERM, forcefully exiting via Signals.SIGKILL", False),
])
def test_only_what_the_verdict_says_again_is_folded(message: str, folded: bool) -> None:
    record = logging.LogRecord("torch.distributed.elastic.agent.server.api", logging.WARNING, __file__, 1,
                               message, None, None)
    fold = FoldFailureLines()
    assert fold.filter(record) is not folded
    assert fold.folded == ([message] if folded else [])


def test_the_filter_sits_on_every_elastic_logger() -> None:
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (creates its logger)

    fold = fold_torchrun_failure_lines()
    try:
        assert fold in logging.getLogger("torch.distributed.elastic.agent.server.api").filters
    finally:
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).removeFilter(fold)
