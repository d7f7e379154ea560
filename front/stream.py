"""One start..stop of a session as the front sees it: its order, its outbox, its root span.

The stream's span ("session") is the root of everything the group does for it: a child of
the client's `trace_id` when the start message carried one. Every result leaves through
the session's outbox tagged with that span, so the sender can make each delivery a child
span. The stream also times what users feel: start to first result, and each region's
`inactive` to its final.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, StatusCode

from front.metrics import FIRST_RESULT, SPEECH_END_TO_FINAL
from front.reorder import StreamOrder

# What a session's sender takes: a message and the span it belongs to (None: the session's own).
Outgoing = tuple[dict[str, Any], Span | None] | None


@dataclass
class Stream:
    id: str
    channels: int
    outbox: asyncio.Queue[Outgoing]
    order: StreamOrder
    span: Span = INVALID_SPAN
    trace_id: str = "-"
    done: asyncio.Event = field(default_factory=asyncio.Event)
    failed: str | None = None
    stopped: bool = False
    seq: int = 0
    started: float = field(default_factory=time.monotonic)
    first_result: float | None = None
    on_fail: Callable[[str], None] | None = None
    _speech_ends: list[deque[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._speech_ends = [deque() for _ in range(self.channels)]

    def fail(self, message: str) -> None:
        """The stream cannot go on: its session is told once, at once, not at `stop`."""
        if self.failed is not None:
            return
        self.failed = message
        self.span.set_status(StatusCode.ERROR, message)
        self.done.set()
        if self.on_fail is not None:
            self.on_fail(message)

    def push(self, items: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for item in items:
            kind = item["type"]
            if kind == "inactive":
                self._speech_ends[item["channel"]].append(now)
            elif kind in ("segment", "error") and "start_time" in item:
                if self.first_result is None:
                    self.first_result = now
                    FIRST_RESULT.observe(now - self.started)
                ends = self._speech_ends[item["channel"]]
                if item.get("is_final") and ends:
                    SPEECH_END_TO_FINAL.observe(now - ends.popleft())
            self.outbox.put_nowait((item, self.span))
        if self.order.complete:
            self.done.set()

    def end(self) -> None:
        """Close the root span (idempotent: ending an ended span is a no-op with a warning, so guard)."""
        if self.span is not INVALID_SPAN and self.span.is_recording():
            self.span.end()
