"""One WebSocket session: the protocol state machine of shared/PROTOCOL.md.

States: idle (no stream) -> streaming (after `start`) -> flushing (after `stop`, until the
last result is out) -> idle again or closed. A session reads its socket only while it is
not waiting on the pipeline, which is what makes backpressure reach the client's TCP.
Results are written by one sender task per session, in the order the stream releases them.

Limits a careless or hostile client meets here (all in `[limits]`):
* backpressure: before a frame goes into the pipeline the session waits while its stream
  has more than `max_inflight_audio_s` of audio unanswered, or more than `max_outbox`
  results wait for a client that does not read; meanwhile it reads nothing, so TCP pushes
  back. Nothing is dropped. A client that reads nothing for `send_timeout_s` is closed 1008.
* idle: no audio (or no `start`) for `idle_timeout_s`: a `warning` at half, then close 1008.
* length: `max_session_s` per WebSocket: a `warning` 10 s before (or at half); then the stream is
  finished as if the client had sent `stop` (finals delivered) and the socket closed 1008.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from aiohttp import WSMsgType, web
from opentelemetry import trace

from front import protocol
from front.guard import token_ok
from front.pipeline import Pipeline
from front.protocol import ProtocolError, Start, Stop
from front.stream import Outgoing, Stream
from runtime import logs, telemetry
from runtime.config import Config
from transport.messages import Route

log = logging.getLogger("front.session")
_tracer = telemetry.tracer("streamer.front")


class Session:
    def __init__(self, ws: web.WebSocketResponse, pipeline: Pipeline, route: Route, cfg: Config,
                 authenticated: bool = True) -> None:
        self.ws = ws
        self.pipeline = pipeline
        self.route = route
        self.cfg = cfg
        self.id = secrets.token_hex(6)
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.stream: Stream | None = None
        self.draining = False
        self._closing = False
        self._closed = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.authenticated = authenticated
        loop = asyncio.get_running_loop()
        self._opened = self._last_audio = loop.time()
        self._warned_idle = self._warned_length = False

    async def run(self) -> None:
        self._sender = sender = asyncio.get_running_loop().create_task(self._send_loop())
        try:
            await self._read_loop()
        except ProtocolError as e:
            log.info("closing %d: %s", e.code or protocol.INTERNAL, e.message)
            await self._close_with(e.message, e.code or protocol.INTERNAL)
        finally:
            if self.stream is not None:
                await self.pipeline.abort(self.stream)
                self.stream = None
            if not sender.done():
                self.outbox.put_nowait(None)
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    async def _read_loop(self) -> None:
        while (msg := await self._next_message()) is not None:
            if msg.type == WSMsgType.TEXT and not self.draining:
                request = protocol.parse(msg.data)
                if isinstance(request, Start):
                    await self._start(request)
                elif await self._stop(request):
                    return
            elif self.draining:
                continue  # shutting down: the stream was stopped at the drain point
            elif msg.type == WSMsgType.BINARY:
                if self.stream is None:
                    raise ProtocolError("binary audio before start", protocol.UNSUPPORTED)
                await self._feed(self.stream, msg.data)
                # Idle means the client sent nothing, not that our own backpressure kept us from reading.
                self._last_audio = asyncio.get_running_loop().time()
            elif msg.type == WSMsgType.TEXT:
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR (a frame over the limit: already closed 1009)
                return

    async def _next_message(self) -> Any:
        """The next client message, or None once the session must end; meets the deadlines."""
        limits = self.cfg.limits
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            idle_at = self._last_audio + limits.idle_timeout_s * (1.0 if self._warned_idle else 0.5)
            lead = min(10.0, limits.max_session_s / 2)
            end_at = self._opened + limits.max_session_s - (0.0 if self._warned_length else lead)
            try:
                return await self.ws.receive(timeout=max(0.001, min(idle_at, end_at) - now))
            except TimeoutError:
                pass
            now = loop.time()
            if now >= end_at and not self._warned_length:
                self._warned_length = True
                self._say(protocol.warning(
                    f"the session ends in {lead:g} s: maximum length {limits.max_session_s:g} s"))
            elif now >= end_at:
                await self._stop(Stop(disconnect=True), code=protocol.POLICY,
                                 reason=f"maximum session length {limits.max_session_s:g} s reached")
                return None
            elif now >= idle_at and not self._warned_idle:
                self._warned_idle = True
                left = limits.idle_timeout_s / 2
                self._say(protocol.warning(f"no audio for {left:g} s: the session closes in {left:g} s"))
            elif now >= idle_at:
                raise ProtocolError(f"idle timeout: no audio for {limits.idle_timeout_s:g} s", protocol.POLICY)

    async def _feed(self, stream: Stream, data: bytes) -> None:
        """Into the pipeline, once the stream and the client are within their budgets."""
        limits = self.cfg.limits
        self._warned_idle = False
        slow_since: float | None = None
        loop = asyncio.get_running_loop()
        while not (stream.failed or self._closing):
            if self.outbox.qsize() > limits.max_outbox:
                slow_since = slow_since or loop.time()
                if loop.time() - slow_since > limits.send_timeout_s:
                    raise ProtocolError(f"the client read no results for {limits.send_timeout_s:g} s",
                                        protocol.POLICY)
                await asyncio.sleep(0.05)
            elif stream.inflight_s > limits.max_inflight_audio_s:
                stream.answered.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stream.answered.wait(), 1.0)
            else:
                await self.pipeline.feed(stream, data)
                return

    async def _start(self, req: Start) -> None:
        if not self.authenticated:
            if not token_ok(self.cfg.security, req.token):
                raise ProtocolError("authentication failed", protocol.POLICY)
            self.authenticated = True
        if self.stream is not None:  # not fatal: the running stream's audio is not lost
            self._say(protocol.error("start while a stream is running was ignored: send stop first"))
            return
        protocol.check_format(req.format, self.cfg.limits)
        self._last_audio = asyncio.get_running_loop().time()
        f = req.format
        self.stream = await self.pipeline.open(self.id, self.route, f.channels, f.sample_rate, f.bit_depth, f.is_float,
                                               req.interim_results and self.route == "segmented",
                                               req.trace_id, self.outbox)
        self.stream.on_fail = self._on_stream_failed
        logs.bind(self.stream.id, self.stream.trace_id)  # this task's log lines name the stream from here on
        log.info("stream started: %s, %d ch, %d Hz, %d-bit%s%s", self.route, f.channels, f.sample_rate,
                 f.bit_depth, " float" if f.is_float else "", ", interim" if req.interim_results else "")

    def _on_stream_failed(self, message: str) -> None:
        """Mid-stream failure (a decoder or segmenter died, bad audio): error, then close 1011."""
        task = asyncio.get_running_loop().create_task(self._close_with(message, protocol.INTERNAL))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Server shutdown: finish the stream with the audio so far, deliver its results, close 1001."""
        self.draining = True
        stream = self.stream
        if stream is not None:
            await self.pipeline.stop(stream)
            try:
                await asyncio.wait_for(stream.done.wait(), timeout)
            except TimeoutError:
                # Say so rather than close as if complete; and release a `stop` waiting on it.
                stream.failed = f"server shut down before this stream's results were ready (waited {timeout:g} s)"
                self._say(protocol.error(stream.failed))
                stream.done.set()
        await self._close_with(None, protocol.GOING_AWAY, "server shutting down")

    async def _stop(self, req: Stop, code: int = protocol.NORMAL, reason: str | None = None) -> bool:
        """Flush the stream; True when the socket is to be closed."""
        stream = self.stream
        if stream is None:
            self._say(protocol.error("stop without a running stream"))
        else:
            await self.pipeline.stop(stream)
            try:
                await asyncio.wait_for(stream.done.wait(), self.cfg.server.stop_timeout_s)
            except TimeoutError:
                stream.failed = f"results did not arrive within {self.cfg.server.stop_timeout_s:g} s"
            self.pipeline.forget(stream)
            self.stream = None
            self._last_audio = asyncio.get_running_loop().time()
            if stream.failed is not None:
                raise ProtocolError(stream.failed, protocol.INTERNAL)
        if req.disconnect:
            await self._close_with(None, code, reason)
            return True
        return False

    async def _close_with(self, message: str | None, code: int, reason: str | None = None) -> None:
        """Send what is queued (and `message` as an error), then close with `code`; once."""
        if self._closing:
            await self._closed.wait()  # whoever started closing decides the code; wait for it
            return
        self._closing = True
        if message is not None:
            self._say(protocol.error(message))
        self.outbox.put_nowait(None)
        if self._sender is not None:
            # A client that reads nothing must not hold the close (and the session) forever.
            done, _ = await asyncio.wait({self._sender}, timeout=self.cfg.limits.send_timeout_s)
            if not done:
                self._sender.cancel()
        try:
            closing = self.ws.close(code=code, message=(reason or message or "").encode()[:120])
            await asyncio.wait_for(closing, self.cfg.limits.send_timeout_s)
        except TimeoutError:
            log.warning("client took no close frame within %g s", self.cfg.limits.send_timeout_s)
        finally:
            self._closed.set()

    def _say(self, item: dict[str, Any]) -> None:
        self.outbox.put_nowait((item, None))

    async def _send_loop(self) -> None:
        while (out := await self.outbox.get()) is not None:
            item, span = out
            if self.ws.closed:
                continue
            try:
                if span is not None and item["type"] in ("segment", "error"):
                    with _tracer.start_as_current_span("deliver", context=trace.set_span_in_context(span),
                                                       attributes={"streamer.result": item["type"]}):
                        await self.ws.send_json(item)
                else:
                    await self.ws.send_json(item)
            except (ConnectionError, RuntimeError):
                pass  # the client went away; the read loop ends the session
