"""Who gets in, on either transport: the sessions of this front, and the rules for a new one.

A new session (a WebSocket upgrade, a gRPC call) is refused while the front drains for
shutdown, when the models are at capacity (`front/admission.py`), and past `[limits]
max_sessions` counted over every front (`front/seats.py`). Both capacity and the limit count
the sessions of every front by their seats, so a session counts from the handshake that
admits it until its seat is given back. Each refusal is counted by reason (a load refusal
also by its rule, and logged with the report it went by, once per report rather than per
client) and says when to come back (5 s). Both transports ask `admit`, so the rules are the
same.
"""

from __future__ import annotations

import asyncio
import logging

from streamer.front.admission import Admission, Refusal
from streamer.front.front_metrics import LOAD, REFUSED, SESSIONS, SESSIONS_TOTAL
from streamer.front.seats import Seat, Seats
from streamer.front.session import Session
from streamer.transport.messages import Load

log = logging.getLogger("front")
RETRY_AFTER_S = 5


class Refused(Exception):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason  # the metric's label: draining, load, session_limit
        self.text = text


class Doors:
    """The sessions of this process, and whether it is draining for shutdown."""

    def __init__(self, seats: Seats, admission: Admission, max_sessions: int) -> None:
        self.sessions: set[Session] = set()
        self.seats = seats  # `[limits] max_sessions`, counted over every front
        self.admission = admission
        self.max_sessions = max_sessions
        self.draining = False
        self._logged: Load | None = None  # the load report the last logged refusal went by
        LOAD.sessions.set_function(seats.taken)

    def admit(self) -> Seat:
        """A seat for a new session, or `Refused` saying why not."""
        if self.draining:
            raise self._refuse("draining", "server shutting down")
        refused: list[tuple[int, Refusal]] = []

        def admits(taken: int) -> bool:
            """Asked under the seats' lock: `taken` is every front's sessions, current."""
            refusal = self.admission.refusal(taken)
            if refusal is not None:
                refused.append((taken, refusal))
            return refusal is None

        seat = self.seats.take(admits)
        if refused:
            taken, refusal = refused[0]
            LOAD.refused.labels(refusal.rule).inc()
            if self._logged is not self.admission.load:
                self._logged = self.admission.load
                log.info("refusing sessions: %s; %d sessions open, load %s", refusal.text, taken, self._logged)
            raise self._refuse("load", f"server is at capacity: {refusal.text}")
        if seat is None:
            raise self._refuse("session_limit", f"server is at its session limit ({self.max_sessions})")
        return seat

    def enter(self, session: Session) -> None:
        """An admitted session starts, on either transport (its seat, taken by `admit`, is what
        admission counts): it counts in the session metrics."""
        self.sessions.add(session)
        SESSIONS.inc()
        SESSIONS_TOTAL.inc()

    def leave(self, session: Session) -> None:
        self.sessions.discard(session)
        SESSIONS.dec()

    @staticmethod
    def _refuse(reason: str, text: str) -> Refused:
        REFUSED.labels(reason).inc()
        return Refused(reason, text)

    async def drain(self, timeout: float) -> None:
        """Stop admitting, let every session finish what it has within `timeout`, close them 1001."""
        self.draining = True
        sessions = list(self.sessions)
        if sessions:
            log.info("draining %d sessions (up to %.1f s)", len(sessions), timeout)
        await asyncio.gather(*(s.drain(timeout) for s in sessions), return_exceptions=True)
