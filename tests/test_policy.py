"""Restart policy on a controllable clock: immediate first restart, back-off, escalation."""

from __future__ import annotations

import pytest

from streamer.supervisor.policy import Escalate, RestartPolicy


def test_first_crash_restarts_at_once_then_backs_off_exponentially() -> None:
    policy = RestartPolicy(intensity=10, period_s=60, backoff_step_s=0.1, backoff_max_s=1.0)
    crashes: list[float] = []
    delays = [policy.next_delay(crashes, now=t) for t in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]


def test_crashes_outside_the_period_are_forgotten() -> None:
    policy = RestartPolicy(intensity=2, period_s=10)
    crashes: list[float] = []
    for t in (0.0, 20.0, 40.0, 60.0):
        assert policy.next_delay(crashes, now=t) == 0.0


def test_past_the_intensity_it_escalates() -> None:
    policy = RestartPolicy(intensity=3, period_s=10)
    crashes: list[float] = []
    for t in (0.0, 1.0, 2.0):
        policy.next_delay(crashes, now=t)
    with pytest.raises(Escalate):
        policy.next_delay(crashes, now=3.0)
