"""How long the agent lets running workers exit when torchrun stops them: a stop may be saving, a crash is not."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from launcher.agent.guard import AFTER_FAILURE_GRACE_S, AgentSettings, NodeGuard
from launcher.agent.main import Hooks
from launcher.agent.requeue import RequeuePolicy
from launcher.contract import PROGRESS_DIR_ENV


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hooks]:
    # The guard names its progress folder in the environment, for the workers it would start: undone after.
    monkeypatch.setenv(PROGRESS_DIR_ENV, "")
    guard = NodeGuard(AgentSettings(stop_grace_s=45))
    try:
        yield Hooks(RequeuePolicy(), guard)
    finally:
        guard.close()


@pytest.mark.parametrize("codes", [[None, -9], [1, None], [None, 2, None], [0, 0]])
def test_after_a_crash_the_others_get_the_failure_grace(hooks: Hooks, codes: list[int | None]) -> None:
    assert hooks.stop_within_s(codes) == AFTER_FAILURE_GRACE_S


def test_after_a_workers_75_the_others_may_still_be_saving(hooks: Hooks) -> None:
    assert hooks.stop_within_s([75, None]) == 45


def test_after_the_notice_every_stop_gets_the_stop_grace(hooks: Hooks) -> None:
    hooks.policy.note_notice(signal.SIGUSR2, None)
    assert hooks.stop_within_s([None, -9]) == 45
