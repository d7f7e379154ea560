"""A session's limits in time: when each falls due, and which one it is.

Three limits end a session by the clock rather than by anything the client sends (all from
`[limits]` and `[security]`):

* authentication: no `start` with the token within `auth_timeout_s` of the handshake;
* length: `max_session_s` per WebSocket, warned `lead` seconds before (10 s, or half the
  length if that is shorter);
* idle: no audio (or no `start`) for `idle_timeout_s`, warned at half.

The rules are kept apart from the session, as plain arithmetic on times the session passes in,
so that each one (and their order when several fall due at once) is tested without a loop, a
socket or a sleep (`tests/test_watchdog.py`); the session's task only sleeps until `next_at`
and carries out what `due` names (`Session._watch`).

Every answer of `due` ends the session, or moves the deadline it met: a warning to the limit
itself (which a loop that stalled past both meets at once, as the next answer), None (a session
spared) past `now`. So the task that asks sleeps, or the session ends, within three answers at
any moment, for limits above zero (the configuration refuses others).

The idle limit spares a session that waits on the server (its own backpressure, a flush): the
server being slow is not the client being idle. The length limit spares nobody.
"""

from __future__ import annotations

import enum
import math


class Due(enum.Enum):
    AUTH = "auth"  # close 1008: a seat is not held by someone who cannot say who they are
    LENGTH_WARNING = "length warning"
    LENGTH = "length"  # finish the stream as a stop would, then close 1008
    IDLE_WARNING = "idle warning"
    IDLE = "idle"  # close 1008


class Watchdog:
    def __init__(self, idle_timeout_s: float, max_session_s: float, auth_timeout_s: float, opened: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_session_s = max_session_s
        self.auth_timeout_s = auth_timeout_s
        self.lead = min(10.0, max_session_s / 2)  # the length's warning comes this long before
        self.opened = opened
        self.active = opened  # the client's last sign of life (or the end of our last wait on us)
        self.warned_idle = False
        self.warned_length = False

    def heard(self, now: float) -> None:
        """The client spoke (a frame read, audio fed): idle from now, and any idle warning void."""
        self.active = now
        self.warned_idle = False

    def spare(self, now: float) -> None:
        """The session waited on the server until now (a stream started, a flush ended): not
        idle time, though the client said nothing new."""
        self.active = now

    def next_at(self, authenticated: bool) -> float:
        """The earliest moment a limit may fall due, by the state of now: audio fed since the last
        call moved the idle deadline, so a sleeper asks again rather than trusts its old answer."""
        end_at = self.opened + self.max_session_s - (0.0 if self.warned_length else self.lead)
        auth_at = math.inf if authenticated else self.opened + self.auth_timeout_s
        return min(self._idle_at(), end_at, auth_at)

    def due(self, now: float, authenticated: bool, spared: bool) -> Due | None:
        """What falls due at `now`, the first by the order of the rules (authentication, length,
        idle); None if nothing does, or if the idle limit met a session that waits on the server
        (`spared`), which moves its idle deadline on. A warning is given once: after it the next
        deadline is the limit itself."""
        if not authenticated and now >= self.opened + self.auth_timeout_s:
            return Due.AUTH
        if now >= self.opened + self.max_session_s - self.lead and not self.warned_length:
            self.warned_length = True
            return Due.LENGTH_WARNING
        if now >= self.opened + self.max_session_s:
            return Due.LENGTH
        if spared:
            self.spare(now)
            return None
        if now >= self._idle_at() and not self.warned_idle:
            self.warned_idle = True
            return Due.IDLE_WARNING
        if now >= self._idle_at():
            return Due.IDLE
        return None

    def _idle_at(self) -> float:
        """The idle warning at half the timeout after the client's last sign of life, the close at
        the whole."""
        return self.active + self.idle_timeout_s * (1.0 if self.warned_idle else 0.5)
