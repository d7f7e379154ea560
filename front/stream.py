"""One start..stop of a session as the front sees it: its order, its budget, its root span.

A `Stream` is data its `Session` owns: the session feeds it what the pipeline says and gets
back the messages to send, in order; the stream itself never writes to a socket. It knows
how much of its audio is answered (the in-flight budget), whether everything it was promised
has come (`complete`), and what users feel: start to first result, and each region's
`inactive` to its final.

The stream's span ("session") is the root of everything the group does for it: a child of
the client's `trace_id` when the start message carried one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, StatusCode

from front.metrics import FIRST_RESULT, PEAK_INFLIGHT, SPEECH_END_TO_FINAL
from front.reorder import StreamOrder
from transport.messages import Event, Result, StreamEnd

log = logging.getLogger("front.stream")


@dataclass
class Stream:
    id: str
    channels: int
    span: Span = INVALID_SPAN
    trace_id: str = "-"
    bytes_per_s: int = 32000
    order: StreamOrder = field(init=False)
    failed: str | None = None
    started: float = field(default_factory=time.monotonic)
    first_result: float | None = None
    fed_bytes: int = 0
    answered_s: float = 0.0  # audio up to here is taken in and every result covering it released
    peak_inflight_s: float = 0.0
    _marks: deque[tuple[float, list[int]]] = field(default_factory=deque)
    _speech_ends: list[deque[float]] = field(default_factory=list)
    _ended: bool = False

    def __post_init__(self) -> None:
        self.order = StreamOrder(self.channels)
        self._speech_ends = [deque() for _ in range(self.channels)]

    @property
    def inflight_s(self) -> float:
        """Audio sent into the pipeline and not yet answered (the session's in-flight budget)."""
        return self.fed_bytes / self.bytes_per_s - self.answered_s

    @property
    def complete(self) -> bool:
        return self.order.complete

    def fed(self, nbytes: int) -> None:
        self.fed_bytes += nbytes
        if self.inflight_s > self.peak_inflight_s:
            self.peak_inflight_s = self.inflight_s

    def on_progress(self, time_s: float, results: list[int]) -> None:
        self._marks.append((time_s, results))
        self._advance()

    def _advance(self) -> None:
        while self._marks and all(c.released >= n for c, n in zip(self.order.channels, self._marks[0][1],
                                                                    strict=False)):
            self.answered_s = self._marks.popleft()[0]

    def on_event(self, e: Event) -> list[dict[str, Any]]:
        return self._observe(self.order.on_event(e))

    def on_result(self, r: Result) -> list[dict[str, Any]]:
        return self._observe(self.order.on_result(r))

    def on_end(self, end: StreamEnd) -> None:
        self.order.end = end

    def _observe(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
        if items:
            self._advance()
        return items

    def fail(self, message: str) -> bool:
        """Mark the stream failed; True the first time."""
        if self.failed is not None:
            return False
        self.failed = message
        self.span.set_status(StatusCode.ERROR, message)
        return True

    def end(self) -> None:
        """Close the root span and record what the stream needed; once."""
        if self._ended:
            return
        self._ended = True
        self.span.set_attribute("streamer.peak_inflight_s", round(self.peak_inflight_s, 3))
        self.span.end()  # a no-op for the invalid span of an untraced stream
        PEAK_INFLIGHT.observe(self.peak_inflight_s)
        outcome = self.failed or ("complete" if self.complete else "aborted")
        log.info("stream ended: %s, %.2f s of audio, peak unanswered %.2f s", outcome,
                 self.fed_bytes / self.bytes_per_s, self.peak_inflight_s)
