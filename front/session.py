"""One WebSocket session: the protocol state machine of shared/PROTOCOL.md.

States: idle (no stream) -> streaming (after `start`) -> flushing (after `stop`, until the
last result is out) -> idle again or closed. A session reads its socket only while it is
not waiting on the pipeline, which is what makes backpressure reach the client's TCP.
Results are written by one sender task per session, in the order the stream releases them.
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
from front.pipeline import Pipeline
from front.protocol import ProtocolError, Start, Stop
from front.stream import Outgoing, Stream
from runtime import logs, telemetry
from runtime.config import Config
from transport.messages import Route

log = logging.getLogger("front.session")
_tracer = telemetry.tracer("streamer.front")


class Session:
    def __init__(self, ws: web.WebSocketResponse, pipeline: Pipeline, route: Route, cfg: Config) -> None:
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

    async def run(self) -> None:
        self._sender = sender = asyncio.get_running_loop().create_task(self._send_loop())
        try:
            await self._read_loop()
        except ProtocolError as e:
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
        async for msg in self.ws:
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
                await self.pipeline.feed(self.stream, msg.data)
            elif msg.type == WSMsgType.ERROR:
                return

    async def _start(self, req: Start) -> None:
        if self.stream is not None:
            raise ProtocolError("start while a stream is running: send stop first", protocol.POLICY)
        protocol.check_format(req.format, self.cfg.limits)
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

    async def _stop(self, req: Stop) -> bool:
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
            if stream.failed is not None:
                raise ProtocolError(stream.failed, protocol.INTERNAL)
        if req.disconnect:
            await self._close_with(None, protocol.NORMAL)
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
            await self._sender
        try:
            await self.ws.close(code=code, message=(reason or message or "").encode()[:120])
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
