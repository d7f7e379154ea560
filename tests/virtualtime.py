"""Virtual time for asyncio: a loop whose clock jumps to its next timer when nothing else runs.

trio's autojump clock, for asyncio. The front's sessions keep every deadline, wait and budget on
their loop's clock (`front/session.py`), and a shard's actors can be given the same clock
(`runtime.clock.LoopClock`), so on this loop a 30 s idle timeout or a two-minute session limit is
tested as it is configured in production, in a second or so of real time, and a test says
exactly when something happened (`loop.time()`).

A jump is taken only when the loop has nothing ready and no descriptor turned readable within
`grace_s` of real time: the rig's ZeroMQ sockets are real, and a packet one part of the process
sent another may be a moment on its way. A shard's actors set a timer at least every `POLL_S`
of virtual time, so a long wait goes by in many short jumps, each giving real I/O its grace:
a reply in flight would have to take longer than all of them to arrive after a deadline it met.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

GRACE_S = 0.002


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0, grace_s: float = GRACE_S) -> None:
        self._now = start
        self.jumps = 0
        super().__init__(_Jumping(self, grace_s))

    def time(self) -> float:
        return self._now

    def jump(self, seconds: float) -> None:
        self._now += seconds
        self.jumps += 1


class _Jumping(selectors.DefaultSelector):
    def __init__(self, loop: VirtualTimeLoop, grace_s: float) -> None:
        super().__init__()
        self._loop = loop
        self._grace_s = grace_s

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:  # nothing scheduled (only real I/O can go on), or ready now
            return super().select(timeout)
        ready = super().select(min(timeout, self._grace_s))
        if not ready:
            self._loop.jump(timeout)  # the loop then finds its next timer due
        return ready


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on virtual time."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)
