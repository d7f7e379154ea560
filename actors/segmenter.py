"""The segmenter actor: decides what audio the model sees, per stream and channel.

For every channel it keeps a cutter (`SpeechRegions` or `FixedChunks`), numbers its
outputs, sends events straight to the front and hands pieces to the `Dispatcher`. Each
result-bearing piece gets `seq` (its position among the channel's results) and
`events_before` (how many events precede it), which is all the front needs to put
results back in audio order and after their `inactive`.

When more than `max_pending_s` of audio waits for a model, it stops reading its input:
the decoder's pool fills, then the front's, and the front stops reading the client.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import zmq
from opentelemetry.trace import INVALID_SPAN, Span

from actors.dispatch import Dispatcher
from actors.loop import attach, serve
from actors.regions import Activity, Cutter, FixedChunks, Output, Piece, RegionRules, SpeechRegions
from runtime import logs, telemetry
from runtime.config import Config
from runtime.metrics import QUEUED, StageMeter, watch_pool
from runtime.process import ChildContext, enter_child
from transport import sockets
from transport.messages import (
    Done,
    Event,
    Exited,
    Frames,
    Progress,
    Ready,
    Result,
    StreamAbort,
    StreamEnd,
    StreamStart,
    StreamStop,
    Work,
)
from transport.shm import StaleBuffer

log = logging.getLogger("segmenter")
PROGRESS_EVERY_S = 0.5  # how often the front hears how far a stream's audio is taken in


@dataclass
class StreamCuts:
    start: StreamStart
    cutters: list[Cutter]
    results: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    span: Span = INVALID_SPAN  # "segment": parent of every inference of the stream
    trace_id: str = "-"
    work_trace: str | None = None  # what each `Work` carries: the segment span's traceparent
    taken_s: float = 0.0  # audio consumed so far (seconds per channel)
    told_s: float = 0.0  # last `Progress` sent

    def end(self, error: str | None = None) -> None:
        telemetry.finish(self.span, error)


def cutters_for(start: StreamStart, cfg: Config) -> list[Cutter]:
    s = cfg.segmenter
    if start.route == "simple":
        return [FixedChunks(s.chunk_s) for _ in range(start.channels)]
    rules = RegionRules(s.vad_aggressiveness, s.min_speech_ms, s.hangover_ms, s.pad_ms,
                        s.max_segment_s, s.interim_interval_s)
    return [SpeechRegions(rules, start.interim) for _ in range(start.channels)]


def main(ctx: ChildContext) -> None:
    enter_child(ctx)
    cfg = ctx.cfg()
    src = attach(ctx, "decoder")
    pool = attach(ctx, "segmenter")
    pool.reclaim()
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inp = sockets.inbox(zctx, ctx.run_dir, "segmenter")
    ctl = sockets.inbox(zctx, ctx.run_dir, "segmenter-ctl")
    front = sockets.outbox(zctx, ctx.run_dir, "front")
    outs = {i: sockets.outbox(zctx, ctx.run_dir, f"model-{i}", immediate=True) for i in range(cfg.model_count)}
    dispatcher = Dispatcher(pool, outs)
    streams: dict[str, StreamCuts] = {}
    tracer = telemetry.tracer("streamer.segmenter")
    meter = StageMeter()

    def stats() -> dict[str, object]:
        meter.set_inflight(dispatcher.inflight + dispatcher.queued)
        QUEUED.set(dispatcher.queued)
        watch_pool("segmenter", pool.used_slots(), pool.spec.nslots)
        return meter.summary()

    ctx.stats = stats
    next_work = pool.next_alloc << 20  # unique across our restarts, no coordination needed

    def deliver(stream: str, ch: int, outputs: list[Output]) -> None:
        nonlocal next_work
        state = streams[stream]
        for o in outputs:
            if isinstance(o, Activity):
                state.events[ch] += 1
                sockets.send(front, Event(stream, ch, o.kind, o.time))  # type: ignore[arg-type]
            elif isinstance(o, Piece):
                next_work += 1
                work = Work(next_work, stream, ch, state.results[ch], state.events[ch],
                            o.start / 16000, o.end / 16000, o.is_final, buf=None,
                            trace=state.work_trace)
                state.results[ch] += 1
                dispatcher.submit(work, o.audio)

    def on_input(msg: object) -> None:
        if isinstance(msg, Frames):
            state = streams.get(msg.stream)
            try:
                audio = src.read_array(msg.buf, np.float32, (msg.channels, msg.frames)) if msg.buf else None
            except StaleBuffer:
                audio = None
            finally:
                if msg.buf:
                    src.release(msg.buf)
            if state is None or audio is None:
                return
            with meter.timed() as t:
                t.audio_s = msg.frames / 16000
                for ch in range(msg.channels):
                    deliver(msg.stream, ch, state.cutters[ch].feed(audio[ch]))
            state.taken_s += msg.frames / 16000
            if state.taken_s - state.told_s >= PROGRESS_EVERY_S:
                state.told_s = state.taken_s
                sockets.send(front, Progress(msg.stream, state.taken_s, list(state.results)))
        elif isinstance(msg, StreamStart):
            span = tracer.start_span("segment", context=telemetry.context_of(msg.trace),
                                     attributes={"streamer.stream": msg.stream, "streamer.route": msg.route})
            streams[msg.stream] = StreamCuts(msg, cutters_for(msg, cfg), [0] * msg.channels, [0] * msg.channels,
                                             span, logs.trace_of(msg.trace),
                                             telemetry.traceparent_of(span) or msg.trace)
        elif isinstance(msg, StreamStop):
            state = streams.get(msg.stream)
            if state is None:
                return
            for ch, cutter in enumerate(state.cutters):
                deliver(msg.stream, ch, cutter.flush())
            del streams[msg.stream]
            state.span.set_attribute("streamer.results", sum(state.results))
            state.end()
            sockets.send(front, StreamEnd(msg.stream, state.results, state.events))
        elif isinstance(msg, StreamAbort):
            gone = streams.pop(msg.stream, None)
            if gone is not None:
                gone.end("aborted")
            dispatcher.cancel(msg.stream)

    def handle(events: dict[zmq.Socket[bytes], int]) -> None:
        while (msg := sockets.try_recv(ctl)) is not None:
            if isinstance(msg, Done):
                dispatcher.on_done(msg)
            elif isinstance(msg, Ready):
                dispatcher.on_ready(msg)
            elif isinstance(msg, Exited) and msg.role == "model":
                dispatcher.on_exit(msg.slot, msg.pid)
        budget = 64  # read input in bounded gulps so control messages are never starved
        while budget and dispatcher.queued_seconds < cfg.segmenter.max_pending_s:
            budget -= 1
            if (data := sockets.try_recv(inp)) is None:
                break
            stream = getattr(data, "stream", "")
            trace_id = logs.trace_of(data.trace) if isinstance(data, StreamStart) else \
                streams[stream].trace_id if stream in streams else "-"
            with logs.bound(stream, trace_id):
                on_input(data)

    reading = True

    def idle() -> None:
        nonlocal reading
        dispatcher.pump()
        want = dispatcher.queued_seconds < cfg.segmenter.max_pending_s
        if want != reading:
            (poller.register(inp, zmq.POLLIN) if want else poller.unregister(inp))
            reading = want
        for work in dispatcher.failed:
            sockets.send(front, Result(work.stream, work.channel, work.seq, work.events_before,
                                       work.start_time, work.end_time, work.is_final,
                                       error=f"inference failed for {work.start_time:.2f}-{work.end_time:.2f}: "
                                       f"model actor died {work.attempt} times"))
        dispatcher.failed.clear()

    poller = zmq.Poller()
    poller.register(ctl, zmq.POLLIN)
    poller.register(inp, zmq.POLLIN)
    ctx.ready()
    log.info("ready, dispatching to %d model slots", len(outs))
    try:
        serve(ctx, poller, handle, idle)
    finally:
        zctx.destroy(linger=sockets.LINGER_MS)
