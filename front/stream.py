"""One start..stop of a session as the front sees it: its order, its outbox, its root span.

The stream's span ("session") is the root of everything the group does for it: a child of
the client's `trace_id` when the start message carried one. Every result leaves through
the session's outbox tagged with that span, so the sender can make each delivery a child
span. The stream also times what users feel: start to first result, and each region's
`inactive` to its final.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, StatusCode

from front.metrics import FIRST_RESULT, PEAK_INFLIGHT, SPEECH_END_TO_FINAL
from front.reorder import StreamOrder

log = logging.getLogger("front.stream")

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
    bytes_per_s: int = 32000
    fed_bytes: int = 0
    answered_s: float = 0.0  # audio up to here is taken in and every result covering it released
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # set whenever answered_s moves
    peak_inflight_s: float = 0.0
    _ended: bool = False
    _marks: deque[tuple[float, list[int]]] = field(default_factory=deque)
    _speech_ends: list[deque[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._speech_ends = [deque() for _ in range(self.channels)]

    @property
    def inflight_s(self) -> float:
        """Audio sent into the pipeline and not yet answered (the session's in-flight budget)."""
        return self.fed_bytes / self.bytes_per_s - self.answered_s

    def fed(self, nbytes: int) -> None:
        self.fed_bytes += nbytes
        self.peak_inflight_s = max(self.peak_inflight_s, self.inflight_s)

    def on_progress(self, time_s: float, results: list[int]) -> None:
        self._marks.append((time_s, results))
        self._advance()

    def _advance(self) -> None:
        moved = False
        while self._marks and all(c.released >= n for c, n in zip(self.order.channels, self._marks[0][1],
                                                                    strict=False)):
            self.answered_s = self._marks.popleft()[0]
            moved = True
        if moved:
            self.answered.set()

    def fail(self, message: str) -> None:
        """The stream cannot go on: its session is told once, at once, not at `stop`."""
        if self.failed is not None:
            return
        self.failed = message
        self.span.set_status(StatusCode.ERROR, message)
        self.done.set()
        self.answered.set()
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
        if items:
            self._advance()
        if self.order.complete:
            self.done.set()
            self.answered.set()

    def end(self) -> None:
        """Close the root span and record what the stream needed; once (abort and forget may both come)."""
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("streamer.peak_inflight_s", round(self.peak_inflight_s, 3))
        self.span.end()  # a no-op for the invalid span of an untraced stream
        PEAK_INFLIGHT.observe(self.peak_inflight_s)
        outcome = self.failed or ("complete" if self.order.complete else "aborted")
        log.info("stream ended: %s, %.2f s of audio, peak unanswered %.2f s", outcome,
                 self.fed_bytes / self.bytes_per_s, self.peak_inflight_s)
