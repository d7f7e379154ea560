"""The decoder actor: client PCM (front pool) -> float32 16 kHz frames (decoder pool).

It holds one `PcmDecoder` per stream. Each input buffer is copied out and released at
once, so the front's pool drains at the decoder's pace; each output is written into the
decoder's own pool, waiting while that is full, which is how a slow segmenter pushes back.
"""

from __future__ import annotations

import logging

import numpy as np
import zmq
from opentelemetry.trace import Span

from actors.loop import attach, serve, write_waiting
from actors.pcm import PcmDecoder, UnsupportedFormat
from runtime import logs, telemetry
from runtime.metrics import StageMeter, watch_pool
from runtime.process import ChildContext, enter_child
from transport import sockets
from transport.messages import (
    Exited,
    Frames,
    Message,
    Notice,
    PcmChunk,
    StreamAbort,
    StreamFailed,
    StreamStart,
    StreamStop,
)
from transport.shm import BufferRef, StaleBuffer

log = logging.getLogger("decoder")

MAX_FRAMES_PER_MESSAGE = 16000  # 1 s per message keeps each write well inside the pool


def main(ctx: ChildContext) -> None:
    enter_child(ctx)
    tracer = telemetry.tracer("streamer.decoder")
    meter = StageMeter()
    src = attach(ctx, "front")
    dst = attach(ctx, "decoder")
    dst.reclaim()  # our previous incarnation's buffers are nobody's now
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inp = sockets.inbox(zctx, ctx.run_dir, "decoder")
    out = sockets.outbox(zctx, ctx.run_dir, "segmenter")
    front = sockets.outbox(zctx, ctx.run_dir, "front")
    streams: dict[str, PcmDecoder] = {}
    seqs: dict[str, int] = {}
    traces: dict[str, str] = {}  # for log lines
    spans: dict[str, Span] = {}  # one "decode" span per stream, parent of the segmenter's

    def stats() -> dict[str, object]:
        meter.set_inflight(len(streams))
        watch_pool("decoder", dst.used_slots(), dst.spec.nslots)
        return meter.summary()

    ctx.stats = stats

    def end_span(stream: str, error: str | None = None) -> None:
        span = spans.pop(stream, None)
        if span is not None:
            telemetry.finish(span, error)

    def emit(stream: str, audio: np.ndarray) -> None:
        for lo in range(0, audio.shape[1], MAX_FRAMES_PER_MESSAGE):
            part = np.ascontiguousarray(audio[:, lo : lo + MAX_FRAMES_PER_MESSAGE])
            ref = write_waiting(dst, part, ctx)
            assert isinstance(ref, BufferRef)
            seq = seqs[stream] = seqs.get(stream, 0) + 1
            sockets.send(out, Frames(stream, seq, part.shape[0], part.shape[1], ref))

    def fail(stream: str, message: str) -> None:
        streams.pop(stream, None)
        end_span(stream, message)
        sockets.send(front, StreamFailed(stream, message))
        sockets.send(out, StreamAbort(stream))

    def on_message(msg: Message) -> None:
        if isinstance(msg, PcmChunk):
            try:
                data = src.read_bytes(msg.buf)
            except StaleBuffer:
                if msg.stream in streams:
                    fail(msg.stream, "audio was lost in the pipeline (decoder restarted)")
                return
            finally:
                src.release(msg.buf)
            dec = streams.get(msg.stream)
            if dec is not None:
                with meter.timed() as t:
                    audio = dec.feed(data)
                    t.audio_s = audio.shape[1] / 16000
                emit(msg.stream, audio)
        elif isinstance(msg, StreamStart):
            span = tracer.start_span("decode", context=telemetry.context_of(msg.trace), attributes={
                "streamer.stream": msg.stream, "audio.channels": msg.channels,
                "audio.sample_rate": msg.sample_rate, "audio.bit_depth": msg.bit_depth})
            try:
                streams[msg.stream] = PcmDecoder(msg.channels, msg.sample_rate, msg.bit_depth, msg.is_float)
            except UnsupportedFormat as e:
                telemetry.finish(span, str(e))
                sockets.send(front, StreamFailed(msg.stream, str(e)))
                return
            spans[msg.stream] = span
            msg.trace = telemetry.traceparent_of(span) or msg.trace
            sockets.send(out, msg)
        elif isinstance(msg, StreamStop):
            dec = streams.pop(msg.stream, None)
            if dec is not None:
                emit(msg.stream, dec.flush())
                if dec.dangling_bytes:
                    log.warning("stream ended mid-sample: %d bytes dropped", dec.dangling_bytes)
                    told = (f"the stream ended mid-sample: its last {dec.dangling_bytes} bytes "
                            "(less than one sample frame) were dropped")
                    sockets.send(front, Notice(msg.stream, told))
                seqs.pop(msg.stream, None)
                sockets.send(out, msg)
            end_span(msg.stream)
        elif isinstance(msg, StreamAbort):
            streams.pop(msg.stream, None)
            seqs.pop(msg.stream, None)
            end_span(msg.stream, "aborted")
            sockets.send(out, msg)
        elif isinstance(msg, Exited) and msg.role == "front":
            # The front's sessions died with it: nobody will stop these streams.
            for stream in list(streams):
                streams.pop(stream)
                seqs.pop(stream, None)
                end_span(stream, "front died")
                sockets.send(out, StreamAbort(stream))

    def handle(_: dict[zmq.Socket[bytes], int]) -> None:
        while (msg := sockets.try_recv(inp)) is not None:
            stream = getattr(msg, "stream", None)
            if stream is None:
                on_message(msg)
                continue
            if isinstance(msg, StreamStart):
                traces[stream] = logs.trace_of(msg.trace)
            with logs.bound(stream, traces.get(stream, "-")):
                on_message(msg)
            if isinstance(msg, (StreamStop, StreamAbort)):
                traces.pop(stream, None)

    poller = zmq.Poller()
    poller.register(inp, zmq.POLLIN)
    ctx.ready()
    log.info("ready")
    try:
        serve(ctx, poller, handle)
    finally:
        zctx.destroy(linger=sockets.LINGER_MS)
