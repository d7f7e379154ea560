"""One WebSocket session: the protocol of docs/protocol.md, and the one owner of its stream.

Phases, and what moves a session between them:

    IDLE ──start──> STREAMING ──stop──> FLUSHING ──last result out──> IDLE (stop, disconnect false)
      │                 │                   │                  └────> CLOSING (stop, disconnect true)
      └─────────────────┴───────────────────┴──> CLOSING ──close frame sent──> CLOSED
         (a client error, a limit, a failed stream: 1011, shutdown: 1001)

The session is the only writer of its client's outbox: client requests, what the pipeline
says about its stream (the pipeline calls `on_pipeline`), limits and shutdown all go through its
methods, and one sender task drains the outbox in order. Its tasks (reader, sender,
watchdog, a close started by the pipeline) live in one task group and end with it. Which limit
in time falls due, and when, is the `Watchdog`'s to say (`front/watchdog.py`); the session's
watchdog task carries it out.

It reads its socket only while it is not waiting on the pipeline, which is what makes
backpressure reach the client's TCP. Limits a careless or hostile client meets here (all in
`[limits]`):
* backpressure: before a frame goes into the pipeline the session waits while its stream
  has more than `max_inflight_audio_s` of audio unanswered, or more than `max_outbox`
  results wait for a client that does not read, or the front's pool is full; meanwhile it
  reads nothing, so TCP pushes back. Nothing is dropped. A client that reads nothing for
  `send_timeout_s` is closed 1008.
* idle: no audio (or no `start`) for `idle_timeout_s`: a `warning` at half, then close 1008.
* length: `max_session_s` per WebSocket: a `warning` 10 s before (or at half); then the stream
  is finished as if the client had sent `stop` (finals delivered) and the socket closed 1008.

Time is the event loop's: every deadline, wait and budget of a session (and of its `Stream`)
reads `loop.time()`, which is what asyncio's own sleeps and timeouts wait on, so a loop with
virtual time (`tests/virtualtime.py`) runs a 30 s idle timeout in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import secrets
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from streamer.front import protocol
from streamer.front.front_metrics import AUDIO_FEEDS, AUDIO_FRAMES
from streamer.front.guard import token_ok
from streamer.front.intake import Intake
from streamer.front.pipeline import Pipeline
from streamer.front.protocol import ProtocolError, Start, Stop
from streamer.front.stream import Budget, Stream
from streamer.front.watchdog import Due, Watchdog
from streamer.front.wire import Wire
from streamer.runtime import logs, telemetry
from streamer.runtime.config import Config
from streamer.transport.messages import (
    MODEL_RATE,
    NOWHERE,
    Abort,
    Close,
    Event,
    Failed,
    Message,
    Notice,
    Open,
    Pcm,
    Progress,
    Result,
    RouteName,
    StreamEnd,
)

log = logging.getLogger("front.session")
_tracer = telemetry.tracer("streamer.front")

LIVE_PACE, LIVE_AHEAD_S = 1.5, 1.0  # a live client: at most 1.5x real time, plus a second sent ahead
DEFAULT_RECEIVE_BUFFER = 1 << 16  # what a socket's receive buffer is taken to be when the kernel sizes it
JOIN_BYTES = 16 << 10  # frames queued together go on as one feed of at most about this much
DEAF_CLOSE_S = 0.5  # a client found to read nothing: its close frame's moment to go out, then the socket goes

# What the sender takes: a message and the span it belongs to (None: the session's own).
Outgoing = tuple[dict[str, Any], Span | None] | None


class Phase(enum.Enum):
    IDLE = "idle"
    STREAMING = "streaming"
    FLUSHING = "flushing"
    CLOSING = "closing"
    CLOSED = "closed"


class Session:
    def __init__(self, wire: Wire, pipeline: Pipeline, route: RouteName, cfg: Config,
                 authenticated: bool = True) -> None:
        self.wire = wire
        self.pipeline = pipeline
        self.route = route
        self.cfg = cfg
        self.id = secrets.token_hex(6)
        self.phase = Phase.IDLE
        self.stream: Stream | None = None
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.intake = Intake(wire, cfg.limits.read_ahead_bytes, self._client_spoke, self._take_now)
        self.authenticated = authenticated
        self.draining = False
        self._streams = 0
        self._received_at_start = 0  # `intake.received` when the running stream started
        self._done = asyncio.Event()  # the stream's last result is out, or it failed
        self._moved = asyncio.Event()  # the stream's answered audio moved (or it ended)
        self._closed = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._reader: asyncio.Task[None] | None = None
        # Kept: asyncio.get_running_loop() costs a getpid() system call on Python 3.11, and the
        # audio path asks for the time on every frame.
        self._loop = asyncio.get_running_loop()
        self.watchdog = Watchdog(cfg.limits.idle_timeout_s, cfg.limits.max_session_s, cfg.security.auth_timeout_s,
                                 self._loop.time())
        self._waiting_on_us = False  # reading is paused by our backpressure or a flush: not idle
        self._deaf = False  # the client read no results for `send_timeout_s`: what waits is not sent
        self._sent = 0  # messages the client has taken (the sender's writes that returned)

    # -- the session's life ---------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            sender = group.create_task(self._send_loop())
            watchdog = group.create_task(self._watch())
            self._reader = group.create_task(self.intake.run())
            try:
                await self._read_loop()
                if self.phase is Phase.CLOSING:
                    # Another task (a drain, a limit, a failed stream) is closing: let it finish. This
                    # handler's return would make aiohttp close the socket itself, with 1000.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closed.wait(), 2 * self.cfg.limits.send_timeout_s)
            except ProtocolError as e:
                log.info("closing %d: %r", e.code or protocol.INTERNAL, e.message)  # repr: client text
                await self._close_with(e.message, e.code or protocol.INTERNAL)
            finally:
                watchdog.cancel()
                self._reader.cancel()
                self._forget_stream(aborted=True)
                self.outbox.put_nowait(None)
                # A client that reads nothing must not hold the session forever.
                done, _ = await asyncio.wait({sender}, timeout=0 if self._deaf else self.cfg.limits.send_timeout_s)
                if not done:
                    sender.cancel()

    async def _read_loop(self) -> None:
        while self.phase not in (Phase.CLOSING, Phase.CLOSED):
            msg = await self.intake.next()
            if self.outbox.qsize() > self.cfg.limits.max_outbox:
                await self._wait_for_reader()  # whatever the frame: text frames make replies too
            if msg.kind == "binary":
                if self.phase in (Phase.FLUSHING, Phase.CLOSING) or self.draining:
                    continue  # the stream was stopped at a limit or for shutdown: the rest is not taken
                if self.phase is not Phase.STREAMING or self.stream is None:
                    raise ProtocolError("binary audio before start", protocol.UNSUPPORTED)
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                # Frames that came in one read (`WebSocketWire`'s hold) go on as one: a message
                # through the pipeline costs about the same whatever its size. (A little at a
                # time all the same: the limits and the budget are checked between feeds.)
                more = self.intake.audio_ready(min(JOIN_BYTES, self.cfg.limits.max_frame_bytes) - len(data))
                AUDIO_FRAMES.value += 1 + len(more)
                AUDIO_FEEDS.value += 1
                await self._feed(self.stream, b"".join([data, *more]) if more else data)
            elif msg.kind == "text":
                if self.draining:
                    continue
                request = protocol.parse(msg.data if isinstance(msg.data, str) else msg.data.decode(errors="replace"))
                if isinstance(request, Start):
                    self._start(request)
                elif not self.authenticated:  # nothing but a start with the token is heard before it
                    raise ProtocolError("authentication failed", protocol.POLICY)
                else:
                    await self._stop(request)
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a frame over the limit: already closed 1009)
                return

    # -- client requests --------------------------------------------------------------------

    def _start(self, req: Start) -> None:
        if not self.authenticated:
            if not token_ok(self.cfg.security, req.token):
                raise ProtocolError("authentication failed", protocol.POLICY)
            self.authenticated = True
        if self.phase is not Phase.IDLE:  # not fatal: the running stream's audio is not lost
            self._say(protocol.error("start while a stream is running was ignored: send stop first"))
            return
        protocol.check_format(req.format, self.cfg.limits)
        f = req.format
        self._streams += 1
        self._received_at_start = self.intake.received
        stream_id = f"{self.id}-{self._streams}"
        parent = req.trace_id
        if parent is not None and not protocol.is_traceparent(parent):
            self._say(protocol.warning("trace_id ignored: not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"))
            parent = None
        span = _tracer.start_span("session", context=telemetry.context_of(parent), attributes={
            "streamer.session": self.id, "streamer.stream": stream_id, "streamer.route": self.route,
            "audio.channels": f.channels, "audio.sample_rate": f.sample_rate, "audio.bit_depth": f.bit_depth})
        carried = telemetry.traceparent_of(span) or parent
        interim = req.interim_results and protocol.ROUTES[self.route].interims
        opened = Open(stream_id, self.pipeline.index, self.route, f.channels, f.sample_rate, f.bit_depth, f.is_float,
                      interim, carried, opened_at=time.monotonic())  # (see `Roster`)
        limits = self.cfg.limits
        self.stream = Stream(opened, span, logs.trace_of(carried), now=self._loop.time, budget=Budget(
            limits.max_inflight_audio_s, limits.max_inflight_bytes, self.cfg.server.stop_timeout_s))
        self._done.clear()
        self.pipeline.routes[stream_id] = self.on_pipeline
        self.pipeline.send(opened)
        self.phase = Phase.STREAMING
        self.watchdog.spare(self._loop.time())
        logs.bind(stream_id, self.stream.trace_id)  # this task's log lines name the stream from here on
        log.info("stream started: %s, %d ch, %d Hz, %d-bit%s%s", self.route, f.channels, f.sample_rate,
                 f.bit_depth, " float" if f.is_float else "", ", interim" if interim else "")

    async def _stop(self, req: Stop, code: int = protocol.NORMAL, reason: str | None = None) -> None:
        """Flush the stream, deliver its results; then close if asked."""
        if self.phase is Phase.IDLE:
            self._say(protocol.error("stop without a running stream"))
        elif self.phase is Phase.FLUSHING:  # a limit is already finishing the stream: let it
            await self._until_done(self.cfg.server.stop_timeout_s)
        elif self.phase is Phase.STREAMING:
            await self._flush(self.cfg.server.stop_timeout_s)
            stream = self.stream
            self._forget_stream(aborted=False)
            if stream is not None and stream.failed is not None:
                raise ProtocolError(stream.failed, protocol.INTERNAL)
        if req.disconnect:
            await self._close_with(None, code, reason)

    async def _flush(self, quiet_s: float, deadline_s: float | None = None) -> None:
        """STREAMING -> FLUSHING: the pipeline flushes the stream; wait for its last result. The
        stream is given up only after `quiet_s` without any word from the pipeline about it (a
        stream that is answered, however slowly, is never cut), or at `deadline_s` from now
        (shutdown has a deadline of its own)."""
        stream = self.stream
        assert stream is not None
        self.phase = Phase.FLUSHING
        self.pipeline.send(Close(stream.id, stream.replays))
        missed = await self._until_done(quiet_s, deadline_s)
        if missed == "quiet":
            stream.fail(f"no result came for {quiet_s:g} s: the rest of this stream's results were given up")
        elif missed == "deadline":
            stream.fail(f"server shut down before this stream's results were ready (waited {deadline_s:g} s)")
        self.watchdog.spare(self._loop.time())

    async def _until_done(self, quiet_s: float, deadline_s: float | None = None) -> str | None:
        """Wait for the stream's last result: None once it is out, "quiet" once `quiet_s` passed
        without any word from the pipeline about the stream, "deadline" at `deadline_s`."""
        give_up = math.inf if deadline_s is None else self._loop.time() + deadline_s
        while not self._done.is_set():
            self._moved.clear()
            wait = min(quiet_s, give_up - self._loop.time())
            if wait <= 0:
                return "deadline"
            try:
                await asyncio.wait_for(self._moved.wait(), wait)
            except TimeoutError:
                if not self._done.is_set():
                    return "quiet" if wait >= quiet_s else "deadline"
        return None

    def _forget_stream(self, aborted: bool) -> None:
        stream = self.stream
        if stream is None:
            return
        self.stream = None
        self.pipeline.routes.pop(stream.id, None)
        if aborted and not stream.complete:
            self.pipeline.send(Abort(stream.id))
        stream.end()
        if self.phase in (Phase.STREAMING, Phase.FLUSHING):
            self.phase = Phase.IDLE

    # -- audio in ---------------------------------------------------------------------------

    async def _feed(self, stream: Stream, data: bytes) -> None:
        """Into the pipeline, once the stream, the client and the front are within their budgets."""
        if not self._has_room(stream, self._loop.time()):
            self._waiting_on_us = True
            try:
                await self._wait_for_room(stream)
            finally:
                self._waiting_on_us = False
            if self.phase is not Phase.STREAMING:
                return
        self._put(stream, data, self._loop.time())

    def _take_now(self, data: bytes) -> bool:
        """Feed a frame the intake has just read, if `_read_loop` would feed it without waiting
        (it waits for the next message, so nothing is ahead of this frame); False leaves the frame
        to the read loop, which meets it in the same state and decides as ever."""
        stream = self.stream
        if self.phase is not Phase.STREAMING or stream is None or self.draining or self.wire.gathering:
            return False  # (a held socket's frames come together: the read loop joins them into one feed)
        now = self._loop.time()
        if not self._has_room(stream, now):
            return False
        AUDIO_FRAMES.value += 1
        AUDIO_FEEDS.value += 1
        self._put(stream, data, now)
        return True

    def _has_room(self, stream: Stream, now: float) -> bool:
        """A feed need not wait: the stream within its budget, the client reading its results,
        the front's pipeline open."""
        return not stream.over_budget(now) and self.outbox.qsize() <= self.cfg.limits.max_outbox \
            and self.pipeline.room.is_set()

    def _put(self, stream: Stream, data: bytes, now: float) -> None:
        self.pipeline.send(Pcm(stream.id, NOWHERE), data)
        stream.fed(data)
        self.watchdog.heard(now)

    async def _wait_for_reader(self) -> None:
        """Results pile up for a client that does not read them: take nothing more from it until it
        does, and close it (1008) if it has read none within `send_timeout_s` (a client that reads,
        however slowly, is held back by this wait, not closed)."""
        limits = self.cfg.limits
        since, sent = self._loop.time(), self._sent
        self._waiting_on_us = True
        try:
            while self.outbox.qsize() > limits.max_outbox and self.phase not in (Phase.CLOSING, Phase.CLOSED):
                if self._sent != sent:
                    since, sent = self._loop.time(), self._sent
                elif self._loop.time() - since > limits.send_timeout_s:
                    self._deaf = True
                    raise ProtocolError(f"the client read no results for {limits.send_timeout_s:g} s",
                                        protocol.POLICY)
                await asyncio.sleep(0.05)
        finally:
            self._waiting_on_us = False

    async def _wait_for_room(self, stream: Stream) -> None:
        limits = self.cfg.limits
        last = moved_at = self._loop.time()
        while self.phase is Phase.STREAMING and stream.failed is None:
            now = self._loop.time()
            stream.held_s += now - last  # summed over waits: a fast client is held many short times
            last = now
            if self._moved.is_set():
                moved_at = now
            elif now - moved_at > limits.stall_timeout_s:  # a safety net: replays heal deaths
                raise ProtocolError(f"the server made no progress on this stream for {limits.stall_timeout_s:g} s",
                                    protocol.INTERNAL)
            if not stream.warned_held and stream.held_s >= limits.held_warning_s:
                stream.warned_held = True
                self._say(protocol.warning(
                    f"held back for {limits.held_warning_s:g} s: the stream is sending audio faster than the "
                    "server works through it; it waits, nothing is lost"))
            if self.outbox.qsize() > limits.max_outbox:
                await self._wait_for_reader()
            elif not self.pipeline.room.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.pipeline.room.wait(), 1.0)
            elif stream.over_budget(now):
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), 1.0)
            else:
                return

    def holdable(self, hold_s: float) -> bool:
        """Whether a read hold of `hold_s` suits this session's client (`WebSocketWire`): it
        streams live, at most `LIVE_PACE` times real time as its bytes arrive (a file uploaded at
        full speed gathers many frames in a read by itself, and a hold would only slow it), and
        at a rate a quarter of the socket's receive buffer carries across the hold (wider
        formats would be held below real time)."""
        s = self.stream
        if s is None:
            return False
        buffer = self.cfg.limits.socket_receive_buffer or DEFAULT_RECEIVE_BUFFER
        if s.bytes_per_s * hold_s > buffer / 4:
            return False
        sent_s = (self.intake.received - self._received_at_start) / s.bytes_per_s
        return sent_s <= LIVE_PACE * (self._loop.time() - s.started) + LIVE_AHEAD_S

    def _client_spoke(self) -> None:
        """The intake read a frame: the client is not idle, whatever the pipeline is doing."""
        self.watchdog.heard(self._loop.time())

    # -- what the pipeline says -----------------------------------------------------------------

    def on_pipeline(self, msg: Message) -> None:
        """An item for this session's stream, from the pipeline's reader (never blocks)."""
        stream = self.stream
        if stream is None:
            return
        if isinstance(msg, Event | Result | Progress | StreamEnd) and stream.superseded(msg):
            return
        if isinstance(msg, Event):
            self._deliver(stream.on_event(msg), stream)
        elif isinstance(msg, Result):
            self._deliver(stream.on_result(msg), stream)
        elif isinstance(msg, Progress):
            stream.on_progress(msg)
        elif isinstance(msg, StreamEnd):
            stream.on_end(msg)
        elif isinstance(msg, Failed):
            self.fail(msg.message)
            return
        elif isinstance(msg, Notice):
            self._say(protocol.warning(msg.message))
        self._moved.set()
        if stream.complete:
            self._done.set()

    def replay(self, why: str) -> None:
        """The decoder or the segmenter died with this stream's state: send the pipeline the
        stream again from its last usable checkpoint (and `stop` again if it was stopping).
        The results it makes again are dropped here, so the client notices nothing."""
        stream = self.stream
        if stream is None or stream.complete or stream.failed is not None:
            return
        opened, chunks = stream.replay()
        self.pipeline.send(opened)
        for chunk in chunks:
            self.pipeline.send(Pcm(stream.id, NOWHERE), chunk)
        if self.phase is Phase.FLUSHING:
            self.pipeline.send(Close(stream.id, stream.replays))
        assert opened.resume is not None
        log.info("replaying the stream from %.2f s (%d bytes) after %s", opened.resume.sample / MODEL_RATE,
                 sum(len(c) for c in chunks), why)

    def fail(self, message: str) -> None:
        """The stream cannot go on (a stage died, bad audio): one error, then close 1011."""
        stream = self.stream
        if stream is None or not stream.fail(message):
            return
        self._done.set()
        self._moved.set()
        if self._group is not None and self.phase is not Phase.FLUSHING:
            self._group.create_task(self._close_with(message, protocol.INTERNAL))

    # -- limits and shutdown --------------------------------------------------------------------

    async def _watch(self) -> None:
        """Carries out the limits in time (`Watchdog`) as they fall due: one timer per session."""
        dog, loop, limits = self.watchdog, self._loop, self.cfg.limits
        while True:
            now = loop.time()
            at = dog.next_at(self.authenticated)
            if now < at:
                await asyncio.sleep(max(0.01, at - now))
                continue
            if self.phase in (Phase.CLOSING, Phase.CLOSED):
                return
            due = dog.due(now, self.authenticated, spared=self._waiting_on_us or self.phase is Phase.FLUSHING)
            if due is Due.AUTH:
                await self._close_with(f"authentication failed: no token within {dog.auth_timeout_s:g} s",
                                       protocol.POLICY)
                return
            if due is Due.LENGTH_WARNING:
                self._say(protocol.warning(
                    f"the session ends in {dog.lead:g} s: maximum length {limits.max_session_s:g} s"))
            elif due is Due.LENGTH:
                if self.phase is Phase.STREAMING:
                    await self._flush(self.cfg.server.stop_timeout_s)
                    self._forget_stream(aborted=False)
                elif self.phase is Phase.FLUSHING:  # the client's own stop: its results first
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._done.wait(), self.cfg.server.stop_timeout_s)
                await self._close_with(None, protocol.POLICY,
                                       f"maximum session length {limits.max_session_s:g} s reached")
                return
            elif due is Due.IDLE_WARNING:
                left = limits.idle_timeout_s / 2
                self._say(protocol.warning(f"no audio for {left:g} s: the session closes in {left:g} s"))
            elif due is Due.IDLE:
                log.info("closing %d: no audio for %g s", protocol.POLICY, limits.idle_timeout_s)
                await self._close_with(f"idle timeout: no audio for {limits.idle_timeout_s:g} s", protocol.POLICY)
                return

    async def drain(self, timeout: float) -> None:
        """Server shutdown: finish the stream with the audio so far, deliver its results, close 1001."""
        self.draining = True
        if self.phase is Phase.STREAMING:
            await self._flush(timeout, deadline_s=timeout)
        elif self.phase is Phase.FLUSHING:
            await self._until_done(timeout, timeout)
        stream = self.stream
        if stream is not None and stream.failed is not None:
            self._say(protocol.error(stream.failed))
        self._forget_stream(aborted=False)
        await self._close_with(None, protocol.GOING_AWAY, "server shutting down")

    # -- out to the client ------------------------------------------------------------------------

    async def _close_with(self, message: str | None, code: int, reason: str | None = None) -> None:
        """Send what is queued (and `message` as an error), then close with `code`; once."""
        if self.phase in (Phase.CLOSING, Phase.CLOSED):
            await self._closed.wait()  # whoever started closing decides the code; wait for it
            return
        self.phase = Phase.CLOSING
        if message is not None:
            self._say(protocol.error(message))
        timeout = self.cfg.limits.send_timeout_s
        try:
            # A client already found to read nothing is not waited for again, for its results, its
            # close frame (behind them in the socket) or the sender's last write: its session ends
            # at `send_timeout_s`, not two or three times that, and its seat is free from then on.
            if not self._deaf:
                await asyncio.wait_for(self.outbox.join(), timeout)
        except TimeoutError:
            log.warning("client read nothing for %g s while closing", timeout)
        close_s = DEAF_CLOSE_S if self._deaf else timeout
        try:
            # The intake's receive() must not be pending: aiohttp would then drop the transport at
            # once (with the client's frames unread: a reset) instead of waiting for its close frame.
            await self._stop_reading()
            await asyncio.wait_for(self.wire.close(code, reason or message or ""), close_s)
        except TimeoutError:
            log.warning("client took no close frame within %g s", close_s)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this session is being cancelled: not ours to swallow
            # aiohttp (3.14) waits for a blocked socket on one future per connection: the reader,
            # cancelled above while it waited there to send a pong, cancelled it for the close too.
            log.info("close cut short: the socket's writes were cancelled under it")
        finally:
            self.phase = Phase.CLOSED
            self._closed.set()

    async def _stop_reading(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self.intake.end()  # a read loop waiting for the client's next message ends instead

    def _say(self, item: dict[str, Any]) -> None:
        self.outbox.put_nowait((item, None))

    def _deliver(self, items: list[dict[str, Any]], stream: Stream) -> None:
        for item in items:
            self.outbox.put_nowait((item, stream.span))

    async def _send_loop(self) -> None:
        while (out := await self.outbox.get()) is not None:
            item, span = out
            try:
                if self.wire.closed:
                    continue
                if span is not None and item["type"] in ("segment", "error"):
                    with _tracer.start_as_current_span("deliver", context=trace.set_span_in_context(span),
                                                       attributes={"streamer.result": item["type"]}):
                        await self.wire.send(item)
                else:
                    await self.wire.send(item)
                self._sent += 1
            except (ConnectionError, RuntimeError):
                pass  # the client went away; the read loop ends the session
            finally:
                self.outbox.task_done()
        self.outbox.task_done()
