"""A session's limits in time, as plain arithmetic (`front/watchdog.py`): no loop, no socket.

The session's task carries out what the watchdog names; the end-to-end behaviour on virtual
time (the messages, the close codes, a stream finished at the length limit) is
`test_front_limits.py`'s. Here: each rule's moment, their order, and that no answer leaves a
deadline in the past, which would make the session's task spin.
"""

from __future__ import annotations

import random

from streamer.front.watchdog import Due, Watchdog


def dog(idle: float = 30.0, length: float = 3600.0, auth: float = 2.0, opened: float = 100.0) -> Watchdog:
    return Watchdog(idle, length, auth, opened)


def walk(d: Watchdog, until: float, authenticated: bool = True, spared: bool = False) -> list[tuple[float, Due]]:
    """Each limit at the moment the session's task would meet it: it sleeps to `next_at`, then asks.
    (At most a few hundred answers: a watchdog that never lets the task sleep fails here, not hangs.)"""
    met: list[tuple[float, Due]] = []
    now = d.opened
    for _ in range(500):
        at = d.next_at(authenticated)
        if at > now:
            now = at
            if now > until:
                break
            continue
        due = d.due(now, authenticated, spared)
        if due is not None:
            met.append((now, due))
            if due in (Due.AUTH, Due.LENGTH, Due.IDLE):
                break
    else:
        raise AssertionError(f"the task would never sleep: {met[-5:]}")
    return met


def test_an_idle_client_is_warned_at_half_its_timeout_and_closed_at_it() -> None:
    assert walk(dog(idle=30.0), 200.0) == [(115.0, Due.IDLE_WARNING), (130.0, Due.IDLE)]


def test_a_word_from_the_client_after_the_warning_voids_it() -> None:
    d = dog(idle=30.0)
    assert d.due(115.0, True, False) is Due.IDLE_WARNING
    d.heard(120.0)
    assert d.next_at(True) == 135.0  # half the timeout again, and warned again there
    assert d.due(135.0, True, False) is Due.IDLE_WARNING


def test_a_session_waiting_on_the_server_is_not_idle_but_its_length_still_applies() -> None:
    d = dog(idle=30.0, length=60.0)
    assert d.due(115.0, True, spared=True) is None
    assert d.next_at(True) == 130.0  # spared: idle counts again from the moment it was met
    assert walk(dog(idle=30.0, length=60.0), 1000.0, spared=True) == [(150.0, Due.LENGTH_WARNING),
                                                                       (160.0, Due.LENGTH)]


def test_the_length_is_warned_ten_seconds_before_or_at_half_a_short_session() -> None:
    assert walk(dog(idle=1e9, length=3600.0), 1e5) == [(3690.0, Due.LENGTH_WARNING), (3700.0, Due.LENGTH)]
    assert walk(dog(idle=1e9, length=8.0), 1e5) == [(104.0, Due.LENGTH_WARNING), (108.0, Due.LENGTH)]


def test_no_token_within_the_auth_timeout_ends_the_session_first() -> None:
    assert walk(dog(idle=1.0, length=2.0, auth=0.5), 1e5, authenticated=False) == [(100.5, Due.AUTH)]
    assert dog(auth=0.5).next_at(authenticated=True) > 100.5  # the token came: the rule is gone


def test_limits_due_together_come_in_the_order_auth_length_idle() -> None:
    d = dog(idle=10.0, length=10.0, auth=10.0)
    late = 500.0  # a loop that stalled past every deadline
    assert d.due(late, False, False) is Due.AUTH
    assert d.due(late, True, False) is Due.LENGTH_WARNING  # a warning is never skipped, even late
    assert d.due(late, True, False) is Due.LENGTH


def test_waiting_on_the_server_does_not_void_an_idle_warning() -> None:
    """Only the client can void it (`heard`): a flush after the warning spares the session while it
    lasts, but once it ends the client has the rest of the timeout, warned, not a new warning."""
    d = dog(idle=30.0)
    assert d.due(115.0, True, False) is Due.IDLE_WARNING
    assert d.due(130.0, True, spared=True) is None
    assert (d.next_at(True), d.due(160.0, True, False)) == (160.0, Due.IDLE)


def test_at_any_moment_the_task_sleeps_or_the_session_ends_within_three_answers() -> None:
    """The session's task asks again at once while `next_at` is not ahead. A warning met late can
    leave its limit due at the same moment (the limit then comes next); but an answer of None, or a
    third answer at one moment, that left a deadline behind would have it ask for ever. Over 200
    random sessions (limits, words from the client, waits on the server, stalls of the loop)."""
    for seed in range(200):
        _one_random_session(random.Random(seed), seed)


def _one_random_session(rnd: random.Random, seed: int) -> None:
    d = dog(idle=rnd.uniform(0.1, 60), length=rnd.uniform(0.1, 600), auth=rnd.uniform(0.1, 10))
    authenticated = rnd.random() < 0.5
    now = d.opened
    for _ in range(1000):
        now += rnd.expovariate(rnd.choice((0.05, 1.0, 10.0)))  # now and then a loop that stalled long
        if rnd.random() < 0.3:
            d.heard(now)
        if rnd.random() < 0.1:
            authenticated = True
        spared = rnd.random() < 0.3
        for _ in range(3):
            if d.next_at(authenticated) > now:
                break
            due = d.due(now, authenticated, spared)
            if due in (Due.AUTH, Due.LENGTH, Due.IDLE):
                return
            assert due is not None or d.next_at(authenticated) > now, (seed, due, now)
        else:
            raise AssertionError(f"seed {seed}: three answers at {now} and a deadline still behind")
