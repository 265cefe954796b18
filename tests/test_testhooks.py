"""The chaos tests' fault hooks: parsed once from the environment, first attempt only."""

from __future__ import annotations

from train.testhooks import ALLOCATE_ENV, LINGER_ENV, SLOW_ENV, STALL_ENV, UNEVEN_EVAL_ENV, Faults


def test_faults_are_parsed_once_and_only_the_first_attempt_injects_them() -> None:
    env = {STALL_ENV: "1:5", SLOW_ENV: "0:3.5", ALLOCATE_ENV: "1:2:512", UNEVEN_EVAL_ENV: "1", LINGER_ENV: "2"}
    assert Faults.from_env(env) == Faults((1, 5), (0, 3.5), (1, 2, 512), True, 2.0)
    assert Faults.from_env({**env, "TORCHELASTIC_RESTART_COUNT": "1"}) == Faults(linger_s=2.0)
    assert Faults.from_env({}) == Faults()
