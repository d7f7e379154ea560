"""The segmenter: decides what audio the model sees, per stream and channel.

For every channel it keeps a cutter (`SpeechRegions` or `FixedChunks`). Each final (or
chunk) gets `seq`, its place among the channel's finals, and `events_before`, how many
events precede it; an interim carries the `seq` of the final it comes before. That is all a
front needs to put results back in audio order, after their `inactive`, and to drop an
interim once its region's final is out. Events and progress go to the stream's front at
the end of the turn (one packet per front); work goes to the `Dispatcher`.

When more than `max_pending_s` of audio waits for a model it stops reading its input: the
decoder's packets wait, the decoder stops reading, the fronts' pools fill and the fronts stop
reading their clients.

Twice a second every front hears the load (`Load`): how busy the model actors were over the
last `LOAD_WINDOW_S`, how much model time a stream costs (each `Done`'s call time is shared
among its items' streams, per second of the stream's audio that its finals have answered:
known from a stream's first final, a few seconds after it starts speaking, not only once it
has been open long; pooled over the streams it is known for), how long the
oldest final has waited, how many streams are open. The fronts admit new sessions by it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.trace import INVALID_SPAN, Span

from streamer.actors.actor import Actor, Env, run_process
from streamer.actors.dispatch import Dispatcher
from streamer.actors.pcm import MODEL_RATE
from streamer.actors.regions import Activity, Cutter, FixedChunks, Output, Passthrough, RegionRules, SpeechRegions
from streamer.runtime import logs, telemetry
from streamer.runtime.config import Config
from streamer.runtime.metrics import QUEUED, STREAM_CRASHES, StageMeter, watch_pool
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import front_inbox
from streamer.transport.messages import (
    Abort,
    Checkpoint,
    Close,
    CloseChannel,
    Done,
    Event,
    Exited,
    Failed,
    Feed,
    Frames,
    Infer,
    Load,
    Message,
    Open,
    Progress,
    Ready,
    Restore,
    Result,
    Roster,
    StreamEnd,
    Work,
    align,
    stream_of,
)
from streamer.transport.shm import BufferPool

log = logging.getLogger("segmenter")
_tracer = telemetry.tracer("streamer.segmenter")
PROGRESS_EVERY_S = 0.5  # how often a front hears how far a stream's audio is taken in
LOAD_EVERY_S = 0.5
LOAD_WINDOW_S = 5.0
LAG_S = 5.0  # how far behind the audio taken in a speaking stream's latest final may lie
MIN_ANSWERED_S = 2.0  # audio behind a stream before its demand counts (a region or two)


@dataclass
class SegmenterStream:
    """One stream as the segmenter sees it."""

    start: Open
    cutters: list[Cutter]
    results: list[int]  # finals (or chunks) so far, per channel
    events: list[int]
    span: Span = INVALID_SPAN  # "segment": parent of every inference of the stream
    work_trace: str | None = None  # what each item of its work carries: the segment span's traceparent
    taken_s: float = 0.0  # audio consumed so far (seconds per channel)
    told_s: float = 0.0  # last `Progress` sent
    model_s: float = 0.0  # model call time spent on its items
    answered_s: float = 0.0  # the end of its latest answered final (stream seconds)
    lost: bool = False  # some of its audio was reclaimed: nothing more until the front's replay

    @property
    def front(self) -> str:
        return front_inbox(self.start.front)


def cutters_for(start: Open, cfg: Config) -> list[Cutter]:
    """A stream's cutters: fresh, or rebuilt from the checkpoint a replay starts at."""
    s = cfg.segmenter
    cp = start.resume
    if start.route == "sequential":
        if cp is None:
            return [Passthrough() for _ in range(start.channels)]
        return [Passthrough.resume(c, cp.sample) for c in cp.channels]
    if start.route == "simple":
        if cp is None:
            return [FixedChunks(s.chunk_s) for _ in range(start.channels)]
        return [FixedChunks.resume(s.chunk_s, c, cp.sample) for c in cp.channels]
    rules = RegionRules(s.vad_aggressiveness, s.min_speech_ms, s.hangover_ms, s.pad_ms,
                        s.max_segment_s, s.interim_interval_s, s.interim_growth, s.vad)
    if cp is None:
        return [SpeechRegions(rules, start.interim) for _ in range(start.channels)]
    return [SpeechRegions.resume(rules, start.interim, c, cp.sample) for c in cp.channels]


def checkpoint_of(state: SegmenterStream) -> Checkpoint:
    """Where the stream could be rebuilt from now: every channel's own point, and the replay's
    start at or before all of them, on a whole input sample."""
    channels = [c.checkpoint() for c in state.cutters]
    return Checkpoint(align(min(c.sample for c in channels), state.start.sample_rate), channels)


def answered(work: Work) -> float:
    """How far into its stream's audio an answered item reaches, in seconds (0: it says nothing of
    that; an interim's region is not answered yet)."""
    match work:
        case Infer():
            return work.end_time if work.is_final is not False else 0.0
        case Feed():
            return work.end / MODEL_RATE
        case Restore() | CloseChannel():
            return work.sample / MODEL_RATE
    return 0.0


def first_work_id(pool: BufferPool) -> int:
    """Where this incarnation's `work_id`s start: above every one an earlier incarnation gave, with
    no coordination. They start at the pool's next allocation id (kept in shared memory, so it
    goes on counting across restarts) times 2**20; one allocation of our own first moves it
    on, or a predecessor that never allocated would have started at the same number (to reach
    ours, one would need over a million items per allocation it made). Model actors tell a
    predecessor's work from ours by it (`Forget.below`)."""
    got = pool.alloc(1)
    if got is not None:
        pool.release(got[0])
    return (pool.next_alloc << 20) + 1


@dataclass
class BusyWindow:
    """Model busy seconds reported over the last `span_s`, as a share of that span."""

    span_s: float
    since: float
    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, now: float, busy_s: float) -> None:
        self.samples.append((now, busy_s))

    def share(self, now: float) -> float:
        while self.samples and self.samples[0][0] < now - self.span_s:
            self.samples.popleft()
        return sum(b for _, b in self.samples) / max(min(self.span_s, now - self.since), 1e-3)


class Segmenter(Actor):
    role = "segmenter"

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        assert self.pool is not None
        self.streams: dict[str, SegmenterStream] = {}
        self.dispatcher = Dispatcher(self.outbox, env.topology.model_inboxes(), self.clock,
                                     max_attempts=self.cfg.model.max_attempts, first_id=first_work_id(self.pool))
        self.meter = StageMeter()
        self.busy = BusyWindow(LOAD_WINDOW_S, self.clock.now())
        self._last_load = -LOAD_EVERY_S
        self._fronts = [front_inbox(k) for k in range(env.topology.fronts)]

    def stats(self) -> dict[str, object]:
        self.meter.set_inflight(self.dispatcher.inflight + self.dispatcher.queued)
        QUEUED.set(self.dispatcher.queued)
        if self.pool is not None:
            watch_pool("segmenter", self.pool.used_slots(), self.pool.spec.nslots)
        return self.meter.summary()

    def per_stream(self) -> float:
        """Model call time per second of a stream's audio. Counted over the audio its finals
        cover, since a region's model time comes only once the region has ended: per second open,
        a stream seems free for its first seconds, and a burst of new sessions all got in before
        any had a cost. A stream that stays quiet counts its silence, less `LAG_S`. Pooled over
        the streams with at least `MIN_ANSWERED_S` behind them, so that a stream of a few
        samples and one call cannot make every stream look expensive."""
        model = audio = 0.0
        for s in self.streams.values():
            seconds = max(s.answered_s, s.taken_s - LAG_S)
            if seconds >= MIN_ANSWERED_S:
                model += s.model_s
                audio += seconds
        return model / audio if audio else 0.0

    def accepting(self) -> bool:
        return self.dispatcher.queued_seconds < self.cfg.segmenter.max_pending_s

    def on_message(self, msg: Message, slab: bytes | None) -> None:
        if isinstance(msg, Frames):
            self._frames(msg, slab)
        elif isinstance(msg, Done):
            self._done(msg)
        elif isinstance(msg, Ready):
            self.dispatcher.on_ready(msg)
        elif isinstance(msg, Open):
            self._open(msg)
        elif isinstance(msg, Close):
            self._close(msg)
        elif isinstance(msg, Abort):
            gone = self.streams.pop(msg.stream, None)
            if gone is not None:
                telemetry.finish(gone.span, "aborted")
            self.dispatcher.cancel(msg.stream)
        elif isinstance(msg, Roster):
            listed = set(msg.streams)
            for stream in [k for k, c in self.streams.items() if c.start.front == msg.front and k not in listed]:
                log.info("forgetting stream %s: its front no longer has it (its abort was lost)", stream)
                telemetry.finish(self.streams.pop(stream).span, "gone")
                self.dispatcher.cancel(stream)

    def _done(self, msg: Done) -> None:
        """A model answered: its answers go on to their streams' fronts, and the stream's cost is
        counted. A `Done` the dispatcher no longer counts on (its items went to another actor when
        this one was declared dead) is dropped whole: those items are being redone."""
        done = self.dispatcher.on_done(msg)
        if not done:
            return
        fronts = {w.stream: front_inbox(w.front) for w in done}
        for answer in msg.answers:
            front = fronts.get(answer.stream)
            if front is not None:
                self.emit(front, answer)
        self.busy.add(self.clock.now(), msg.busy_s)
        for work in done:
            if (state := self.streams.get(work.stream)) is not None:
                state.model_s += msg.busy_s / len(done)
                state.answered_s = max(state.answered_s, answered(work))

    def _open(self, msg: Open) -> None:
        cp = msg.resume
        old = self.streams.get(msg.stream)
        if old is not None and msg.gen < old.start.gen:
            return  # a dead decoder's, read after the replay that superseded it (see `Open.gen`)
        self.streams.pop(msg.stream, None)
        if old is not None:  # a replay after the decoder died: what this process knew is superseded
            telemetry.finish(old.span, "replayed")
        if cp is not None:  # work already handed out before the checkpoint stays; the rest comes again
            self.dispatcher.cancel(msg.stream, keep_below=[c.finals for c in cp.channels])
        span = _tracer.start_span("segment", context=telemetry.context_of(msg.trace), attributes={
            "streamer.stream": msg.stream, "streamer.route": msg.route,
            "streamer.replay_from": -1 if cp is None else cp.sample})
        cp = cp or Checkpoint.start(msg.channels)
        taken = cp.sample / MODEL_RATE
        state = self.streams[msg.stream] = SegmenterStream(msg, cutters_for(msg, self.cfg),
                                                           [c.finals for c in cp.channels],
                                                           [c.events for c in cp.channels], span,
                                                           telemetry.traceparent_of(span) or msg.trace, taken_s=taken,
                                                           told_s=taken)
        if msg.route == "sequential":  # the model's state for each channel, from scratch or the checkpoint's
            for ch, c in enumerate(cp.channels):
                self.dispatcher.submit_sequential(Restore(
                    work_id=self.dispatcher.new_id(), stream=msg.stream, front=msg.front, trace=state.work_trace,
                    channel=ch, channels=msg.channels, sample=c.sample, finals=c.finals, state=c.model))

    def on_exit(self, note: Exited) -> None:
        if note.role == "model":
            self.dispatcher.on_exit(note.index, note.pid)
        elif note.role == "front":
            # Its sessions died with it. The decoder says so too (Abort), but not if it was down
            # itself at the time: nobody else would ever end these streams.
            for stream in [k for k, c in self.streams.items() if c.start.front == note.index]:
                telemetry.finish(self.streams.pop(stream).span, "front died")
                self.dispatcher.cancel(stream)

    def _frames(self, msg: Frames, slab: bytes | None) -> None:
        state = self.streams.get(msg.stream)
        if state is None or state.lost or msg.gen < state.start.gen:
            return  # ended, failed, waiting for its replay, or of a run a replay superseded: nowhere
        if slab is None:
            # Reclaimed: the decoder restarted (or this process did) after it was sent. The front
            # plays the stream again from its last checkpoint; until then, nothing more of it.
            state.lost = True
            return
        t0 = time.perf_counter()
        audio = np.frombuffer(slab, np.float32, msg.channels * msg.frames, msg.at.offset)
        audio = audio.reshape(msg.channels, msg.frames)
        for ch, cutter in enumerate(state.cutters):
            self._deliver(msg.stream, state, ch, cutter.feed(audio[ch]))
        self.meter.add(time.perf_counter() - t0, msg.frames / MODEL_RATE)
        state.taken_s += msg.frames / MODEL_RATE
        if state.taken_s - state.told_s >= PROGRESS_EVERY_S and state.start.route != "sequential":
            # (a sequential stream's progress and checkpoints are its model's: its actor says them)
            state.told_s = state.taken_s
            self.emit(state.front, Progress(msg.stream, state.taken_s, list(state.results), checkpoint_of(state),
                                            state.start.gen))

    def _deliver(self, stream: str, state: SegmenterStream, ch: int, outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, Activity):
                self.emit(state.front, Event(stream, ch, o.kind, o.time, state.events[ch],  # type: ignore[arg-type]
                                             state.start.gen))
                state.events[ch] += 1
                continue
            if state.start.route == "sequential":
                self.dispatcher.submit_sequential(Feed(
                    work_id=self.dispatcher.new_id(), stream=stream, front=state.start.front, trace=state.work_trace,
                    channel=ch, channels=state.start.channels, start=o.start, end=o.end,
                    interim=state.start.interim), o.audio)
                continue
            work = Infer(work_id=self.dispatcher.new_id(), stream=stream, front=state.start.front,
                         trace=state.work_trace, channel=ch, seq=state.results[ch], events_before=state.events[ch],
                         start_time=o.start / MODEL_RATE, end_time=o.end / MODEL_RATE, is_final=o.is_final,
                         gen=state.start.gen)
            if o.is_final is not False:  # an interim takes the number of the final it comes before
                state.results[ch] += 1
            self.dispatcher.submit(work, o.audio)

    def contain(self, item: Message, error: Exception) -> bool:
        stream = stream_of(item)
        state = self.streams.get(stream or "")
        if stream is None or state is None:
            return False
        with logs.bound(stream, logs.trace_of(state.start.trace)):
            log.error("failing the stream: handling its %s raised", type(item).__name__, exc_info=error)
        STREAM_CRASHES.inc()
        self._fail(stream, f"internal error in the segmenter: {type(error).__name__}")
        return True

    def _fail(self, stream: str, message: str) -> None:
        state = self.streams.pop(stream)
        telemetry.finish(state.span, message)
        self.dispatcher.cancel(stream)
        self.emit(state.front, Failed(stream, message))

    def _close(self, msg: Close) -> None:
        stream = msg.stream
        state = self.streams.get(stream)
        if state is None or state.lost or msg.gen < state.start.gen:
            return  # a lost stream's replay says `stop` again; an earlier run's stop is not this run's end
        del self.streams[stream]
        for ch, cutter in enumerate(state.cutters):
            self._deliver(stream, state, ch, cutter.flush())
        telemetry.finish(state.span)
        if state.start.route == "sequential":  # how many finals there were is the model's to say
            for ch, cutter in enumerate(state.cutters):
                self.dispatcher.submit_sequential(CloseChannel(
                    work_id=self.dispatcher.new_id(), stream=stream, front=state.start.front, trace=state.work_trace,
                    channel=ch, channels=state.start.channels, sample=cutter.checkpoint().sample,
                    interim=state.start.interim))
            return
        state.span.set_attribute("streamer.results", sum(state.results))
        self.emit(state.front, StreamEnd(stream, state.results, state.events, state.start.gen))

    def on_idle(self) -> None:
        self.dispatcher.pump()
        for work in self.dispatcher.failed:  # (pieces on their own: a sequential stream fails whole, below)
            self.emit(front_inbox(work.front), Result(
                work.stream, work.channel, work.seq, work.events_before, work.start_time, work.end_time,
                work.is_final, error=f"inference failed for {work.start_time:.2f}-{work.end_time:.2f}: "
                f"model actor died {work.attempt} times", gen=work.gen))
        self.dispatcher.failed.clear()
        for stream, owner, why in self.dispatcher.failed_streams:
            if stream in self.streams:
                self._fail(stream, why)
            else:  # closed already: its front waits for the end the model was to report
                self.emit(front_inbox(owner), Failed(stream, why))
        self.dispatcher.failed_streams.clear()
        now = self.clock.now()
        if now - self._last_load >= LOAD_EVERY_S:
            self._last_load = now
            # Capacity counts every model process, live or restarting: a death lasts a restart
            # (a few hundred ms), and refusing sessions for it would let a client notice it.
            # The wait that says the models are behind is that of open streams' finals: the last
            # finals of streams already stopped are a backlog that cannot grow (a newcomer's own
            # final, should it wait behind them, counts); counted, they refused sessions whenever
            # many streams stopped at once (the soak's first turnover).
            load = Load(len(self.streams), len(self.dispatcher.peers), round(self.busy.share(now), 4),
                        round(self.per_stream(), 4), round(self.dispatcher.queue_delay(self.streams.__contains__), 4),
                        round(self.dispatcher.queued_seconds, 3))
            for front in self._fronts:
                self.emit(front, load)


def main(ctx: ChildContext) -> None:
    run_process(ctx, Segmenter)
