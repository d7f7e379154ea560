"""Time, injected: production reads the monotonic clock, tests move a fake one by hand.

Everything in an actor that depends on time (heartbeats, re-announcements, load windows,
queue delays, the stop deadline) asks its `Clock`, so a test of a 10 s window runs in
microseconds and says exactly what it means.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()


class LoopClock:
    """An event loop's own time: the actors of a shard keep the time its sessions keep (the
    loop's sleeps and timeouts wait on it), so a loop with virtual time moves them all."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def now(self) -> float:
        return self._loop.time()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
