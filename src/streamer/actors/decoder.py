"""The decoder: client PCM (each front's pool) -> float32 frames at 16 kHz (the decoder's pool).

It keeps one `PcmDecoder` per stream (the carried half sample, the resampler's state). In a
turn it takes every packet waiting from every front and decodes each stream's bytes; at the
end of the turn the segmenter gets one packet: one `Frames` item per stream holding all the
audio that stream produced this turn, and the stream control (open, close, abort) in order
with it. A `Close` first sends what the stream still had, then the resampler's tail.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import Span

from streamer.actors.actor import Actor, Env, Slab, run_process
from streamer.actors.pcm import MODEL_RATE, PcmDecoder, UnsupportedFormat
from streamer.runtime import logs, telemetry
from streamer.runtime.metrics import STREAM_CRASHES, StageMeter, watch_pool
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import Place, front_inbox
from streamer.transport.messages import (
    NOWHERE,
    Abort,
    Close,
    Exited,
    Failed,
    Frames,
    Message,
    Notice,
    Open,
    Pcm,
    Roster,
    stream_of,
)

log = logging.getLogger("decoder")
_tracer = telemetry.tracer("streamer.decoder")


@dataclass
class DecoderStream:
    """One stream as the decoder sees it."""

    pcm: PcmDecoder
    front: int
    trace_id: str
    span: Span
    raw: list[memoryview] = field(default_factory=list)  # client bytes of this turn, not yet decoded
    lost: bool = False  # some of its audio was reclaimed: nothing more until the front's replay
    gen: int = 0  # the run (`Open.gen`) being decoded: its Frames say so
    opened_at: float = 0.0  # `Open.opened_at`: a roster listed before it says nothing of the stream


class Decoder(Actor):
    role = "decoder"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.streams: dict[str, DecoderStream] = {}
        self.meter = StageMeter("decoder")
        self.segmenter = Place("segmenter", self.place.index).name  # its shard's

    def inherit(self, old: Actor) -> None:
        assert isinstance(old, Decoder)
        for d in old.streams.values():
            telemetry.finish(d.span, "the decoder was replaced")
        self.meter = old.meter

    def stats(self) -> dict[str, object]:
        self.meter.set_inflight(len(self.streams))
        if self.pool is not None:
            watch_pool(self.pool.spec.name, self.pool.used_slots(), self.pool.spec.nslots)
        return self.meter.summary()

    def on_message(self, msg: Message, slab: Slab | None) -> None:
        if isinstance(msg, Pcm):
            d = self.streams.get(msg.stream)
            if d is None or d.lost:
                return  # ended, failed, or waiting for its replay: these bytes go nowhere
            if slab is None:
                # Reclaimed: a process of the pipeline died after the front sent it. The front heard
                # of that death too and plays the stream again from its last checkpoint; until
                # that Open arrives, decoding on would only put a hole in the audio.
                d.lost = True
                d.raw.clear()
                return
            d.raw.append(memoryview(slab)[msg.at.offset : msg.at.offset + msg.at.nbytes])
        elif isinstance(msg, Open):
            self._open(msg)
        elif isinstance(msg, Close):
            self._close(msg)
        elif isinstance(msg, Abort):
            gone = self.streams.pop(msg.stream, None)
            if gone is not None:
                telemetry.finish(gone.span, "aborted")
            self.emit(self.segmenter, msg)
        elif isinstance(msg, Roster):
            for stream in [s for s, d in self.streams.items() if msg.forgets(d.front, s, d.opened_at)]:
                telemetry.finish(self.streams.pop(stream).span, "gone")
            self.emit(self.segmenter, msg)  # the segmenter's are what a lost Abort leaves behind

    def on_exit(self, note: Exited) -> None:
        if note.role != "front":
            return
        # That front's sessions died with it: nobody will stop these streams.
        for stream in [s for s, d in self.streams.items() if d.front == note.index]:
            telemetry.finish(self.streams.pop(stream).span, "front died")
            self.emit(self.segmenter, Abort(stream))

    def at_rest(self) -> bool:
        return not self.streams

    def on_idle(self) -> None:
        for stream, d in list(self.streams.items()):
            if d.raw:
                try:
                    self._send_audio(stream, d)
                except Exception as e:
                    self._crashed(stream, e)

    def contain(self, item: Message, error: Exception) -> bool:
        stream = stream_of(item)
        if stream in self.streams:
            self._crashed(stream, error)
            return True
        if isinstance(item, Open):
            log.exception("opening stream %s failed", item.stream, exc_info=error)
            self.emit(front_inbox(item.front), Failed(item.stream, f"internal error: {type(error).__name__}"))
            return True
        return False

    def _crashed(self, stream: str, error: Exception) -> None:
        with logs.bound(stream, self.streams[stream].trace_id):
            log.error("failing the stream: its decoding raised", exc_info=error)
        STREAM_CRASHES.inc()
        self._fail(stream, f"internal error in the decoder: {type(error).__name__}")

    def _send_audio(self, stream: str, d: DecoderStream, last: bool = False) -> None:
        """Decode what the stream's frames of this turn hold (one call however many came: the
        per-call cost is the decoder's main cost at 20 ms frames) and queue it for the segmenter;
        `last` also drains the resampler."""
        t0 = time.perf_counter()
        parts = []
        if d.raw:
            parts.append(d.pcm.feed(d.raw[0] if len(d.raw) == 1 else b"".join(d.raw)))
            d.raw.clear()
        if last:
            parts.append(d.pcm.flush())
        audio = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        self.meter.add(time.perf_counter() - t0, audio.shape[1] / MODEL_RATE)
        # A burst (a client uploading at full speed) decodes to more than a packet may carry: it
        # goes as several items, each within one packet's share of the pool.
        step = max(1, self.outbox.max_bytes // (audio.shape[0] * audio.itemsize))
        for first in range(0, audio.shape[1], step):
            part = audio if audio.shape[1] <= step else np.ascontiguousarray(audio[:, first : first + step])
            self.emit(self.segmenter, Frames(stream, part.shape[0], part.shape[1], NOWHERE, d.gen), part)

    def _open(self, msg: Open) -> None:
        span = _tracer.start_span("decode", context=telemetry.context_of(msg.trace), attributes={
            "streamer.stream": msg.stream, "audio.channels": msg.channels,
            "audio.sample_rate": msg.sample_rate, "audio.bit_depth": msg.bit_depth})
        old = self.streams.pop(msg.stream, None)
        if old is not None:  # a replay after the segmenter died: start again from its checkpoint
            telemetry.finish(old.span, "replayed")
        try:
            if msg.resume is None:
                pcm = PcmDecoder(msg.channels, msg.sample_rate, msg.bit_depth, msg.is_float)
            else:
                first, preroll = msg.resume.input_frames(msg.sample_rate)
                pcm = PcmDecoder.resume(msg.channels, msg.sample_rate, msg.bit_depth, msg.is_float, first, preroll)
        except UnsupportedFormat as e:
            telemetry.finish(span, str(e))
            self.emit(front_inbox(msg.front), Failed(msg.stream, str(e)))
            return
        self.streams[msg.stream] = DecoderStream(pcm, msg.front, logs.trace_of(msg.trace), span, gen=msg.gen,
                                              opened_at=msg.opened_at)
        msg.trace = telemetry.traceparent_of(span) or msg.trace
        self.emit(self.segmenter, msg)

    def _close(self, msg: Close) -> None:
        d = self.streams.get(msg.stream)
        if d is None or d.lost:
            return  # a lost stream's replay says `stop` again
        # Still in `streams` while its tail is decoded: if that raises, `contain` fails this stream,
        # not the process (whose replacement would be handed the same `Close`).
        self._send_audio(msg.stream, d, last=True)
        del self.streams[msg.stream]
        if d.pcm.dangling_bytes:
            with logs.bound(msg.stream, d.trace_id):
                log.warning("stream ended mid-sample: %d bytes dropped", d.pcm.dangling_bytes)
            self.emit(front_inbox(d.front), Notice(msg.stream, (
                f"the stream ended mid-sample: its last {d.pcm.dangling_bytes} bytes "
                "(less than one sample frame) were dropped")))
        telemetry.finish(d.span)
        self.emit(self.segmenter, msg)

    def _fail(self, stream: str, message: str) -> None:
        d = self.streams.pop(stream)
        telemetry.finish(d.span, message)
        self.emit(front_inbox(d.front), Failed(stream, message))
        self.emit(self.segmenter, Abort(stream))


def main(ctx: ChildContext) -> None:
    run_process(ctx, Decoder)
