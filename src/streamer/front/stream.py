"""One start..stop of a session as the front sees it: its order, its budget, its root span.

A `Stream` is data its `Session` owns: the session feeds it what the pipeline says and gets
back the messages to send, in order; the stream itself never writes to a socket. It knows
how much of its audio is answered (the in-flight budget), whether everything it was promised
has come (`complete`), and what users feel: start to first result, and each region's
`inactive` to its final.

The in-flight budget. A stream may have at most `max_inflight_audio_s` of audio unanswered,
and at most `max_inflight_bytes` of the client's bytes (a wide format: 192 kHz x 8 channels of
float is 6 MB a second), and no more than its answers, at the pace they came lately, cover in
half the stop timeout (starting small until that pace is known): a client uploading a file to
a busy server is held back to what the server can answer, so that after its `stop` the last
result comes well within the timeout, however many others share the models.

The stream's span ("session") is the root of everything the group does for it: a child of
the client's `trace_id` when the start message carried one.

Time is the session's (`now`: its event loop's clock), never read here from the system, so a
test on a loop with virtual time sees budgets and latencies in that time.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

import msgspec
from opentelemetry.trace import INVALID_SPAN, Span, StatusCode

from streamer.front.front_metrics import FIRST_RESULT, PEAK_INFLIGHT, SPEECH_END_TO_FINAL
from streamer.front.protocol import ROUTES
from streamer.front.reorder import StreamOrder
from streamer.transport.messages import MODEL_RATE, Checkpoint, Event, Open, Progress, Result, StreamEnd, align

log = logging.getLogger("front.stream")


MIN_INFLIGHT_S = 2.0  # the budget never shrinks below this, and starts there until the pace is known
RATE_WINDOW_S = 10.0  # the answers' pace is measured over this much of the recent past


@dataclass(frozen=True)
class Budget:
    """How much of a stream may be in the pipeline, unanswered ([limits] and the stop timeout)."""

    max_s: float = 60.0
    max_bytes: int = 1 << 62
    answer_within_s: float = 60.0


@dataclass
class Stream:
    opened: Open  # what the pipeline was told at the start (a replay tells it again, with a checkpoint)
    span: Span = INVALID_SPAN
    trace_id: str = "-"
    order: StreamOrder = field(init=False)
    failed: str | None = None
    now: Callable[[], float] = monotonic  # the owner's clock
    started: float = field(init=False)
    first_result: float | None = None
    fed_bytes: int = 0
    answered_s: float = 0.0  # audio up to here is taken in and every result covering it released
    peak_inflight_s: float = 0.0
    replays: int = 0
    held_s: float = 0.0  # time its audio waited in the front for room, over the stream's life
    warned_held: bool = False  # told it is held back (once per stream)
    budget: Budget = field(default_factory=Budget)
    _answered_at: deque[tuple[float, float]] = field(default_factory=deque)  # (when, answered_s), recent
    _marks: deque[tuple[float, list[int]]] = field(default_factory=deque)
    _checkpoints: deque[Checkpoint] = field(default_factory=deque)  # not yet usable: finals outstanding
    _restart: Checkpoint = field(init=False)  # the latest usable one
    _kept: deque[bytes] = field(default_factory=deque)  # the client's bytes from `_kept_from` on
    _kept_from: int = 0
    _told: list[deque[tuple[int, int]]] = field(default_factory=list)  # per channel: (index, sample) of the
    # events the client was told of from the last usable checkpoint on, which a replay pins
    _speech_ends: list[deque[float]] = field(default_factory=list)
    _ended: bool = False
    frame_bytes: int = field(init=False)  # one sample of every channel
    bytes_per_s: int = field(init=False)
    _surely_within: float = field(init=False)  # unanswered bytes below every budget `budget_s` can give

    def __post_init__(self) -> None:
        o = self.opened
        self.started = self.now()
        self.order = StreamOrder(o.channels)
        self._speech_ends = [deque() for _ in range(o.channels)]
        self._told = [deque() for _ in range(o.channels)]
        self._restart = Checkpoint.start(o.channels)
        self.frame_bytes = o.channels * o.bit_depth // 8
        self.bytes_per_s = self.frame_bytes * o.sample_rate
        b = self.budget
        self._surely_within = min(b.max_bytes, min(b.max_s, MIN_INFLIGHT_S) * self.bytes_per_s)

    @property
    def id(self) -> str:
        return self.opened.stream

    @property
    def channels(self) -> int:
        return self.opened.channels

    @property
    def inflight_s(self) -> float:
        """Audio sent into the pipeline and not yet answered (the session's in-flight budget)."""
        return self.fed_bytes / self.bytes_per_s - self.answered_s

    @property
    def complete(self) -> bool:
        return self.order.complete

    def over_budget(self, now: float) -> bool:
        """More is unanswered than the budget allows: the session waits before feeding more."""
        unanswered = self.fed_bytes - self.answered_s * self.bytes_per_s
        if unanswered <= self._surely_within:
            return False  # the budget never shrinks below this: no need to work it out (every frame asks)
        if unanswered > self.budget.max_bytes:
            return True
        return self.inflight_s > self.budget_s(now)

    def budget_s(self, now: float) -> float:
        """Seconds of audio this stream may have unanswered now: `max_s`, or what its answers at
        their recent pace cover in half the stop timeout, never less than `MIN_INFLIGHT_S`; and
        `MIN_INFLIGHT_S` until the pace is known (a slow start, as TCP's: a guess made before any
        answer came lets a few fast uploads fill the pipeline, and the streams behind them wait
        for all of it)."""
        b = self.budget
        marks = self._answered_at
        if not marks or now - marks[0][0] < RATE_WINDOW_S / 2:
            return min(b.max_s, MIN_INFLIGHT_S)
        then, answered = marks[0]
        rate = (self.answered_s - answered) / max(now - then, 1e-3)
        return min(b.max_s, max(MIN_INFLIGHT_S, rate * b.answer_within_s / 2))

    def fed(self, data: bytes) -> None:
        self.fed_bytes += len(data)
        self._kept.append(data)
        if self.inflight_s > self.peak_inflight_s:
            self.peak_inflight_s = self.inflight_s

    @property
    def kept_bytes(self) -> int:
        """The client's bytes held for a replay: from the last usable checkpoint (less the
        resampler's pre-roll) to now."""
        return self.fed_bytes - self._kept_from

    def on_progress(self, p: Progress) -> None:
        self._marks.append((p.time, p.results))
        self._checkpoints.append(p.checkpoint)
        self._advance()

    def _released_all(self, counts: list[int]) -> bool:
        return all(c.released >= n for c, n in zip(self.order.channels, counts, strict=False))

    def _advance(self) -> None:
        answered = self.answered_s
        while self._marks and self._released_all(self._marks[0][1]):
            self.answered_s = max(self.answered_s, self._marks.popleft()[0])
        if self.answered_s > answered or not self._answered_at:
            self._note_pace(self.now())
        usable = None
        while self._checkpoints and self._released_all([c.finals for c in self._checkpoints[0].channels]):
            usable = self._checkpoints.popleft()
        if usable is not None and usable.sample > self._restart.sample:
            # On a whole input sample: a stateful model's checkpoints fall wherever its audio did.
            self._restart = msgspec.structs.replace(usable, sample=align(usable.sample, self.opened.sample_rate))
            self._forget_before(self._replay_from())
            for told, cut in zip(self._told, self._restart.channels, strict=True):
                while told and told[0][0] < cut.events:
                    told.popleft()

    def _note_pace(self, now: float) -> None:
        """Remember when the answered audio moved, keeping one point at least `RATE_WINDOW_S` old."""
        marks = self._answered_at
        marks.append((now, self.answered_s))
        while len(marks) > 1 and now - marks[1][0] >= RATE_WINDOW_S:
            marks.popleft()

    def _replay_from(self) -> int:
        first, preroll = self._restart.input_frames(self.opened.sample_rate)
        return (first - preroll) * self.frame_bytes

    def _forget_before(self, offset: int) -> None:
        while self._kept and self._kept_from + len(self._kept[0]) <= offset:
            self._kept_from += len(self._kept.popleft())

    def replay(self) -> tuple[Open, list[bytes]]:
        """A decoder or segmenter lost this stream's state: the Open that rebuilds it from the
        last usable checkpoint, with the events the client was told of since pinned (a VAD
        started afresh must not decide them otherwise), and the client's bytes to send again
        after it. From here on only the new run's word counts (`superseded`); its end too."""
        self.replays += 1
        offset = self._replay_from()
        chunks = list(self._kept)
        if chunks and offset > self._kept_from:
            chunks[0] = chunks[0][offset - self._kept_from :]
        restart = self._restart
        pinned = [msgspec.structs.replace(cut, pins=[at for index, at in told if index >= cut.events])
                  for told, cut in zip(self._told, restart.channels, strict=True)]
        if not ROUTES[self.opened.route].model_ordered:
            self.order.end = None  # the new run ends itself (its `Close` goes with the replay)
        return msgspec.structs.replace(self.opened, resume=msgspec.structs.replace(restart, channels=pinned),
                                       gen=self.replays), chunks

    def superseded(self, msg: Event | Result | Progress | StreamEnd) -> bool:
        """Said by a run of the stream that a replay has replaced (`Event.gen`): dropped. Such words
        come late (left in a dead segmenter's queue, or made by a live one from audio it had
        before the replay's `Open`), and the replay was pinned only to what the client had been
        told before it. The sequential route's progress and results are its stateful model's,
        which keeps its own account of replays."""
        return msg.gen < self.replays and not ROUTES[self.opened.route].model_ordered

    def on_event(self, e: Event) -> list[dict[str, Any]]:
        items = self.order.on_event(e)
        if items:  # the client is told of it now (a repeat gives nothing)
            self._told[e.channel].append((e.index, round(e.time * MODEL_RATE)))
        return self._observe(items)

    def on_result(self, r: Result) -> list[dict[str, Any]]:
        return self._observe(self.order.on_result(r))

    def on_end(self, end: StreamEnd) -> None:
        self.order.end = end

    def _observe(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        now = self.now()
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
        log.info("stream ended: %s, %.2f s of audio, peak unanswered %.2f s, held back %.2f s%s", outcome,
                 self.fed_bytes / self.bytes_per_s, self.peak_inflight_s, self.held_s,
                 f", replayed {self.replays} times" if self.replays else "")
