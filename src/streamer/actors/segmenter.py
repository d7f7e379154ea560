"""The segmenter: decides what audio the model sees, per stream and channel.

For every channel it keeps a cutter, and for every stream its route (`actors/routes.py`,
chosen when the stream opens): what the cutters are, what their pieces become for the model
actors, what the front hears of the stream's progress and end. On the segmented and simple
routes each final (or chunk) gets `seq`, its place among the channel's finals, and
`events_before`, how many events precede it; an interim carries the `seq` of the final it
comes before. That is all a front needs to put results back in audio order, after their
`inactive`, and to drop an interim once its region's final is out. Events and progress go to
the stream's front at the end of the turn (one packet per front); work goes to the
`Dispatcher`.

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

from streamer.actors.actor import Actor, Env, Slab, run_process
from streamer.actors.dispatch import Dispatcher
from streamer.actors.pcm import MODEL_RATE
from streamer.actors.regions import Activity, Output
from streamer.actors.routes import SegmenterStream, routes
from streamer.runtime import logs, telemetry
from streamer.runtime.metrics import QUEUED, STREAM_CRASHES, StageMeter, watch_pool
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import front_inbox
from streamer.transport.messages import (
    Abort,
    Checkpoint,
    Close,
    Done,
    Event,
    Exited,
    Failed,
    Frames,
    Load,
    Message,
    Open,
    Ready,
    Result,
    Roster,
    Running,
    stream_of,
)
from streamer.transport.shm import BufferPool

log = logging.getLogger("segmenter")
_tracer = telemetry.tracer("streamer.segmenter")
LOAD_EVERY_S = 0.5
LOAD_WINDOW_S = 5.0
LAG_S = 5.0  # how far behind the audio taken in a speaking stream's latest final may lie
MIN_ANSWERED_S = 2.0  # audio behind a stream before its demand counts (a region or two)


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
        # Streams ended here (closed, aborted, failed), by their last run's `Open`, until their front's
        # roster no longer has them: an earlier run's `Open` read after the end opens nothing.
        self.ended: dict[str, Open] = {}
        self.dispatcher = Dispatcher(self.outbox, env.topology.model_inboxes(), self.clock,
                                     max_attempts=self.cfg.model.max_attempts, first_id=first_work_id(self.pool),
                                     shard=self.place.index)
        self.routes = routes(self.cfg.segmenter, self.dispatcher, self.emit)
        self.meter = StageMeter("segmenter")
        self.busy = BusyWindow(LOAD_WINDOW_S, self.clock.now())
        self._last_load = -LOAD_EVERY_S
        self._fronts = [front_inbox(k) for k in range(env.topology.fronts)]  # every shard's: the models are shared

    def inherit(self, old: Actor) -> None:
        assert isinstance(old, Segmenter)
        for state in old.streams.values():
            telemetry.finish(state.span, "the segmenter was replaced")
        self.meter, self.busy, self.ended = old.meter, old.busy, old.ended
        # A `Ready` still queued from a model process that has died since must not be believed.
        self.dispatcher.inherit_deaths(old.dispatcher)

    def stats(self) -> dict[str, object]:
        self.meter.set_inflight(self.dispatcher.inflight + self.dispatcher.queued)
        QUEUED.set(self.dispatcher.queued)
        self.dispatcher.publish()
        if self.pool is not None:
            watch_pool(self.pool.spec.name, self.pool.used_slots(), self.pool.spec.nslots)
        return self.meter.summary()

    def per_stream(self) -> float:
        """Model call time per second of a stream's audio (`cost`)."""
        model, audio = self.cost()
        return model / audio if audio else 0.0

    def cost(self) -> tuple[float, float]:
        """Model call time and the seconds of audio it answered. Counted over the audio a stream's
        finals cover, since a region's model time comes only once the region has ended: per
        second open, a stream seems free for its first seconds, and a burst of new sessions all
        got in before any had a cost. A stream that stays quiet counts its silence, less `LAG_S`.
        Pooled over the streams with at least `MIN_ANSWERED_S` behind them, so that a stream of a
        few samples and one call cannot make every stream look expensive."""
        model = audio = 0.0
        for s in self.streams.values():
            seconds = max(s.answered_s, s.taken_s - LAG_S)
            if seconds >= MIN_ANSWERED_S:
                model += s.model_s
                audio += seconds
        return model, audio

    def at_rest(self) -> bool:
        """No stream open and nothing for the models, waiting or out, and every model actor greeted
        (a `Forget` that could not go is retried at every turn)."""
        d = self.dispatcher
        return (not self.streams and not d.queued and not d.inflight and not d.sequential.waiting
                and all(p.greeted for p in d.peers if p.pid))

    def accepting(self) -> bool:
        return self.dispatcher.queued_seconds < self.cfg.segmenter.max_pending_s

    def on_message(self, msg: Message, slab: Slab | None) -> None:
        if isinstance(msg, Frames):
            self._frames(msg, slab)
        elif isinstance(msg, Done):
            self._done(msg)
        elif isinstance(msg, Ready):
            self.dispatcher.on_ready(msg)
        elif isinstance(msg, Running):
            self.dispatcher.on_running(msg)
        elif isinstance(msg, Open):
            self._open(msg)
        elif isinstance(msg, Close):
            self._close(msg)
        elif isinstance(msg, Abort):
            gone = self.streams.pop(msg.stream, None)
            if gone is not None:
                telemetry.finish(gone.span, "aborted")
                self.ended[msg.stream] = gone.start
            self.dispatcher.cancel(msg.stream)
        elif isinstance(msg, Roster):
            for stream in [k for k, c in self.streams.items() if msg.forgets(c.start.front, k, c.start.opened_at)]:
                log.info("forgetting stream %s: its front no longer has it (its abort was lost)", stream)
                telemetry.finish(self.streams.pop(stream).span, "gone")
                self.dispatcher.cancel(stream)
            for stream in [k for k, o in self.ended.items() if msg.forgets(o.front, k, o.opened_at)]:
                del self.ended[stream]

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
                state.answered_s = max(state.answered_s, state.route.answered(work))

    def _open(self, msg: Open) -> None:
        cp = msg.resume
        old = self.streams.get(msg.stream)
        if old is not None and msg.gen < old.start.gen:
            return  # a dead decoder's, read after the replay that superseded it (see `Open.gen`)
        ended = self.ended.pop(msg.stream, None)
        if ended is not None and msg.gen <= ended.gen:
            # A dead decoder's, read after the run that superseded it had ended here: opened again,
            # a sequential stream's restore would follow its close (or drop) onto its model actor,
            # and build a state there that nobody would ever let go.
            self.ended[msg.stream] = ended
            return
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
        route = self.routes[msg.route]
        state = self.streams[msg.stream] = SegmenterStream(msg, route, route.cutters(msg),
                                                           [c.finals for c in cp.channels],
                                                           [c.events for c in cp.channels], span,
                                                           telemetry.traceparent_of(span) or msg.trace, taken_s=taken,
                                                           told_s=taken)
        route.opened(state, cp)

    def on_exit(self, note: Exited) -> None:
        if note.role == "model":
            self.dispatcher.on_exit(note.index, note.pid)
        elif note.role == "front":
            # Its sessions died with it. The decoder says so too (Abort), but not if it was down
            # itself at the time: nobody else would ever end these streams.
            for stream in [k for k, c in self.streams.items() if c.start.front == note.index]:
                telemetry.finish(self.streams.pop(stream).span, "front died")
                self.dispatcher.cancel(stream)
            self.ended = {k: o for k, o in self.ended.items() if o.front != note.index}

    def _frames(self, msg: Frames, slab: Slab | None) -> None:
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
            if outputs := cutter.feed(audio[ch]):  # (most frames make nothing: no call for them)
                self._deliver(state, ch, outputs)
        self.meter.add(time.perf_counter() - t0, msg.frames / MODEL_RATE)
        state.taken_s += msg.frames / MODEL_RATE
        state.route.taken(state)

    def _deliver(self, state: SegmenterStream, ch: int, outputs: list[Output]) -> None:
        """What a channel's cutter made: its events to the front, its pieces to its route."""
        for o in outputs:
            if isinstance(o, Activity):
                self.emit(state.front, Event(state.stream, ch, o.kind, o.time,  # type: ignore[arg-type]
                                             state.events[ch], state.start.gen))
                state.events[ch] += 1
            else:
                state.route.piece(state, ch, o)

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
        self.ended[stream] = state.start
        telemetry.finish(state.span, message)
        self.dispatcher.cancel(stream)
        self.emit(state.front, Failed(stream, message))

    def _close(self, msg: Close) -> None:
        stream = msg.stream
        state = self.streams.get(stream)
        if state is None or state.lost or msg.gen < state.start.gen:
            return  # a lost stream's replay says `stop` again; an earlier run's stop is not this run's end
        # Still in `streams` while its last cuts are made: if that raises, `contain` fails this
        # stream, as in any other of its handlers, and never its actor (whose replacement would be
        # handed the same `Close`).
        for ch, cutter in enumerate(state.cutters):
            self._deliver(state, ch, cutter.flush())
        state.route.closed(state)
        del self.streams[stream]
        self.ended[stream] = state.start
        telemetry.finish(state.span)

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
            model, audio = self.cost()
            load = Load(len(self.streams), len(self.dispatcher.peers), round(self.busy.share(now), 4),
                        round(model / audio if audio else 0.0, 4),
                        round(self.dispatcher.queue_delay(self.streams.__contains__), 4),
                        round(self.dispatcher.queued_seconds, 3), self.place.index, round(audio, 3))
            for front in self._fronts:
                self.emit(front, load)


def main(ctx: ChildContext) -> None:
    run_process(ctx, Segmenter)
