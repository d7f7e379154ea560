"""The front's side of the pipeline: streams out to the decoder, results back in.

Client bytes are split into pieces that fit the front's pool and written there once;
only descriptors go to the decoder. When the pool is full, `feed` waits, and since a
session reads its socket only between feeds, a client that outpaces the pipeline is held
back by TCP. One router task receives everything actors send to the front and hands it
to the stream it names; a stream that has already ended simply drops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq
import zmq.asyncio

from front import protocol
from front.reorder import StreamOrder
from front.stream import Outgoing, Stream
from runtime import logs, telemetry
from runtime.process import ChildContext
from transport import sockets
from transport.messages import (
    Event,
    Exited,
    Notice,
    PcmChunk,
    Progress,
    Result,
    Route,
    StreamAbort,
    StreamEnd,
    StreamFailed,
    StreamStart,
    StreamStop,
    decode,
    encode,
)
from transport.shm import BufferPool, PoolFull, PoolSpec

log = logging.getLogger("front.pipeline")
_tracer = telemetry.tracer("streamer.front")
_sent, _received = sockets.MESSAGES.labels("out"), sockets.MESSAGES.labels("in")


class Pipeline:
    def __init__(self, ctx: ChildContext, pool_spec: PoolSpec) -> None:
        self._zctx = zmq.asyncio.Context()
        self._to_decoder = self._zctx.socket(zmq.PUSH)
        self._to_decoder.setsockopt(zmq.LINGER, sockets.LINGER_MS)
        self._to_decoder.connect(sockets.endpoint(ctx.run_dir, "decoder"))
        self._inbox = self._zctx.socket(zmq.PULL)
        sockets.bind_inbox(self._inbox, ctx.run_dir, "front")
        self._pool = BufferPool.attach(pool_spec, ctx.run_id)
        self._pool.reclaim()  # whatever a previous front wrote belongs to sessions that are gone
        self._piece = pool_spec.slot_size * 8
        self.streams: dict[str, Stream] = {}
        self._router: asyncio.Task[None] | None = None
        self._closed = False
        self._opened = 0

    def start(self) -> None:
        self._router = asyncio.get_running_loop().create_task(self._route())

    async def close(self) -> None:
        self._closed = True
        if self._router is not None:
            self._router.cancel()
        self._zctx.destroy(linger=sockets.LINGER_MS)

    async def _send(self, msg: Any) -> None:
        if self._closed:
            return  # shutting down: a handler cancelled late has nobody left to tell
        await self._to_decoder.send(encode(msg))
        _sent.inc()

    async def open(self, session: str, route: Route, channels: int, sample_rate: int, bit_depth: int,
                   is_float: bool, interim: bool, trace: str | None, outbox: asyncio.Queue[Outgoing]) -> Stream:
        self._opened += 1
        stream_id = f"{session}-{self._opened}"
        span = _tracer.start_span("session", context=telemetry.context_of(trace), attributes={
            "streamer.session": session, "streamer.stream": stream_id, "streamer.route": route,
            "audio.channels": channels, "audio.sample_rate": sample_rate, "audio.bit_depth": bit_depth})
        carried = telemetry.traceparent_of(span) or trace
        stream = Stream(stream_id, channels, outbox, StreamOrder(channels), span, logs.trace_of(carried),
                        bytes_per_s=channels * sample_rate * bit_depth // 8)
        self.streams[stream.id] = stream
        await self._send(StreamStart(stream.id, route, channels, sample_rate, bit_depth, is_float, interim, carried))
        return stream

    async def feed(self, stream: Stream, data: bytes) -> None:
        stream.fed(len(data))
        view = memoryview(data)
        for lo in range(0, len(view), self._piece):
            ref = await self._write(view[lo : lo + self._piece])
            stream.seq += 1
            await self._send(PcmChunk(stream.id, stream.seq, ref))

    async def _write(self, piece: memoryview) -> Any:
        delay = 0.0005
        while True:
            try:
                return self._pool.write(piece)
            except PoolFull:
                await asyncio.sleep(delay)  # backpressure: this session stops reading its socket
                delay = min(delay * 2, 0.02)

    async def stop(self, stream: Stream) -> None:
        """Flush the stream (once, whether the client or a shutdown asks first)."""
        if not stream.stopped:
            stream.stopped = True
            await self._send(StreamStop(stream.id))

    async def abort(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        stream.end()
        await self._send(StreamAbort(stream.id))

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        stream.end()

    async def _route(self) -> None:
        while True:
            raw = await self._inbox.recv()
            _received.inc()
            msg = decode(raw)
            if isinstance(msg, Exited):
                self._on_exited(msg)
                continue
            stream = self.streams.get(getattr(msg, "stream", ""))
            if stream is None:
                continue
            if isinstance(msg, Event):
                stream.push(stream.order.on_event(msg))
            elif isinstance(msg, Result):
                stream.push(stream.order.on_result(msg))
            elif isinstance(msg, StreamEnd):
                stream.order.end = msg
                stream.push([])
            elif isinstance(msg, StreamFailed):
                stream.fail(msg.message)
            elif isinstance(msg, Progress):
                stream.on_progress(msg.time, msg.results)
            elif isinstance(msg, Notice):
                stream.outbox.put_nowait((protocol.warning(msg.message), None))

    def _on_exited(self, msg: Exited) -> None:
        """A decoder or segmenter held every open stream's state (resampler, VAD, regions):
        those streams fail now, with a clear error, rather than hang or return wrong times."""
        if msg.role not in ("decoder", "segmenter"):
            return
        lost = list(self.streams.values())
        if lost:
            log.warning("%s died (%s): failing %d open streams", msg.role, msg.how, len(lost))
        for stream in lost:
            stream.fail(f"the {msg.role} process died ({msg.how}) and this stream's state was lost; "
                        "results sent so far stand: start a new stream for the rest")

    def pool_used(self) -> int:
        return self._pool.used_slots()
