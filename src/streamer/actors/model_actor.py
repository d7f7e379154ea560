"""A model actor: takes a packet of work, runs the model once on it, answers the fronts, returns a credit.

One packet per turn (`turn_limit = 1`), so each call's results leave as soon as it ends. Each
item does what its type says: the packet's `Infer`s (pieces on their own) go to the model in
one call if it has a batch call (`models.run_batch`), one call per item otherwise; the
sequential route's items (`Restore`, `Feed`, `CloseChannel`, `Drop`) go one at a time, in
order, to the states this actor holds (`actors/states.py`).

The results travel inside the `Done` that returns the credit, to the segmenter, which
forwards them to each stream's front: one message, so there is no moment at which the
dispatcher counts an item answered while its answer could still die with this process
(results sent on their own could sit in this process's queue, unsent, when it was killed,
and nothing would ever redo them). If the process dies before the `Done` is out, the items
are redone elsewhere and the fronts drop any duplicate. A stale packet (its allocation was
reclaimed after the segmenter restarted) is acknowledged and skipped: its streams are already
answered with an error.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import prometheus_client
from opentelemetry.trace import StatusCode

from streamer.actors import models
from streamer.actors.actor import Actor, Env, Slab, run_process
from streamer.actors.models.base import Audio
from streamer.actors.states import States, in_stream_time
from streamer.actors.turns import Turns
from streamer.runtime import logs, telemetry
from streamer.runtime.metrics import StageMeter
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import segmenter_control
from streamer.transport.messages import (
    MODEL_RATE,
    Done,
    Failed,
    Forget,
    Infer,
    Message,
    Pass,
    Ready,
    Result,
    Running,
    Stateful,
    ToModel,
    Want,
    audio_place,
)

log = logging.getLogger("model")
_tracer = telemetry.tracer("streamer.model")
LATENCY = prometheus_client.Histogram("streamer_inference_seconds", "Wall time of one model call",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FAILURES = prometheus_client.Counter("streamer_inference_failures", "Items the model answered with an error")

NO_AUDIO = np.zeros(0, np.float32)
READY_EVERY_S = 1.0  # re-announce so a restarted segmenter learns this actor's credit


class ModelActor(Actor):
    role = "model"
    turn_limit = 1
    stop_drain_s = 3.0

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self.model = models.build(self.cfg.model.name, env.cfg.to_dict()["model"], seed=os.getpid())
        self.pid = os.getpid()
        self.meter = StageMeter("model")
        self._work: list[tuple[ToModel, Slab | None]] = []
        self._last_hello = -READY_EVERY_S
        self._below: dict[int, int] = {}  # by shard: its work numbered below this is an earlier segmenter's
        self._shard_of = env.topology.shard_of  # whose segmenter a stream's work comes from, by its front
        self._controls = [segmenter_control(k) for k in range(env.topology.shards)]
        self.turns = Turns(len(self._controls)) if len(self._controls) > 1 else None  # whose turn to send
        self.streams = States(self.model) if isinstance(self.model, models.StreamModel) else None
        self.max_batch = models.batch_limit(self.model, self.cfg.model.max_batch)

    def stats(self) -> dict[str, object]:
        """The stage's totals, and how many sequential streams this process holds a model state
        for: each may be a whole decoder (pocketsphinx: ~75 MiB), so one never let go shows."""
        return {**self.meter.summary(), "held": len(self.streams.held) if self.streams is not None else 0}

    def on_message(self, msg: Message, slab: Slab | None) -> None:
        if isinstance(msg, ToModel):
            if msg.work_id >= self._below.get(self._shard_of(msg.front), 0):
                self._work.append((msg, slab))
            else:  # queued by a segmenter that has died since: nobody waits for its answer
                log.info("skipped work %d of an earlier segmenter", msg.work_id)
        elif isinstance(msg, Forget):
            self._forget(msg)
        elif isinstance(msg, Want) and self.turns is not None:
            self.turns.want(msg.shard, self.clock.now())
        elif isinstance(msg, Pass) and self.turns is not None:
            self.turns.passed(msg.shard)

    def _forget(self, msg: Forget) -> None:
        """A segmenter's first word to this process: whatever it held for an earlier one of its
        shard goes; the other shards' work and streams stay."""
        if msg.below < self._below.get(msg.shard, 0):
            return  # an earlier segmenter's, overtaken by its successor's on the other connection
        self._below[msg.shard] = msg.below
        if self.turns is not None:
            self.turns.forgotten(msg.shard)
        mine = self._shard_of
        self._work = [(w, slab) for w, slab in self._work if mine(w.front) != msg.shard or w.work_id >= msg.below]
        dropped = self.streams.forget(lambda front: mine(front) == msg.shard) if self.streams is not None else 0
        if dropped:
            log.info("a new segmenter: dropped the state of %d sequential streams", dropped)

    def at_rest(self) -> bool:
        """Nothing to run, and no turn given out that may lapse (it must lapse on time)."""
        return not self._work and (self.turns is None or self.turns.holder is None)

    def on_idle(self) -> None:
        if self._work:
            work, self._work = self._work, []
            for shard in dict.fromkeys(self._shard_of(w.front) for w, _ in work):  # one packet: one shard
                self._running(shard)
                self.emit(self._controls[shard], self._answer([x for x in work if self._shard_of(x[0].front) == shard]))
                if self.turns is not None:
                    self.turns.answered(shard)
        now = self.clock.now()
        if self.turns is not None:
            self._say(self.turns.settle(self.input_waiting(), now))
        if now - self._last_hello >= READY_EVERY_S:
            self._last_hello = now
            for control in self._controls:
                self.emit(control, Ready(self.place.index, self.pid, self.cfg.model.max_inflight, self.max_batch))

    def _running(self, shard: int) -> None:
        """Tell every shard whose packet this call is, before it begins (sent now, not at the end
        of the turn): should the process die in it, only that shard's items spend an attempt."""
        if self.turns is not None:
            self._say(self.turns.began(shard))
            self.flush()

    def _say(self, said: list[tuple[int, int]]) -> None:
        for shard, what in said:
            self.emit(self._controls[shard], Running(self.place.index, self.pid, what))

    def _answer(self, batch: list[tuple[ToModel, Slab | None]]) -> Done:
        """Run the packet's items; the `Done` that carries their answers."""
        done = Done(self.place.index, self.pid, [w.work_id for w, _ in batch], 0.0)
        pieces: list[tuple[Infer, Audio]] = []
        ordered: list[tuple[Stateful, Audio]] = []
        for w, slab in batch:
            at = audio_place(w)
            if at is not None and at.nbytes and slab is None:
                continue  # its audio was reclaimed: stale
            audio = NO_AUDIO if at is None or slab is None else np.frombuffer(slab, np.float32, at.nbytes // 4,
                                                                               at.offset)
            if isinstance(w, Infer):
                pieces.append((w, audio))
            else:
                ordered.append((w, audio))
        if len(pieces) + len(ordered) < len(batch):
            log.info("%d items were stale (their segmenter restarted): skipped",
                     len(batch) - len(pieces) - len(ordered))
        if ordered:
            self._answer_in_order(ordered, done)
        if pieces:
            self._call(pieces, done)
        done.busy_s = round(done.busy_s, 6)
        return done

    def _call(self, todo: list[tuple[Infer, Audio]], done: Done) -> None:
        """One model call for the packet's independent items."""
        self.meter.set_inflight(len(todo))
        spans = [_tracer.start_span("inference", context=telemetry.context_of(w.trace), attributes={
            "streamer.work_id": w.work_id, "streamer.attempt": w.attempt, "streamer.channel": w.channel,
            "audio.start_time": w.start_time, "audio.end_time": w.end_time, "streamer.is_final": bool(w.is_final),
            "streamer.batch": len(todo)}) for w, _ in todo]
        t0 = time.perf_counter()
        outputs = models.run_batch(self.model, [(audio, w.is_final) for w, audio in todo])
        busy = time.perf_counter() - t0
        done.busy_s += busy
        LATENCY.observe(busy)
        self.meter.done(busy, sum(a.shape[0] for _, a in todo) / MODEL_RATE, len(todo))
        self.meter.set_inflight(0)
        for (w, audio), out, span in zip(todo, outputs, spans, strict=True):
            done.answers.append(self._result(w, audio, out))
            if isinstance(out, Exception):
                span.set_status(StatusCode.ERROR, str(out))
            span.end()

    def _answer_in_order(self, items: list[tuple[Stateful, Audio]], done: Done) -> None:
        """Sequential streams' items, one at a time, in the order they came."""
        if self.streams is None:
            for stream in dict.fromkeys(w.stream for w, _ in items):
                done.answers.append(Failed(stream, f"the model {self.cfg.model.name!r} has no stream interface "
                                                   "(open/feed/close): no sequential route"))
            return
        t0 = time.perf_counter()
        for w, audio in items:
            self.streams.handle(w, audio, done.answers, done.points)
        busy = time.perf_counter() - t0
        done.busy_s += busy
        self.meter.done(busy, sum(a.shape[0] for _, a in items) / MODEL_RATE, len(items))

    def _result(self, w: Infer, audio: Audio, out: dict[str, Any] | Exception) -> Result:
        result = Result(w.stream, w.channel, w.seq, w.events_before, w.start_time, w.end_time, w.is_final, gen=w.gen)
        if isinstance(out, dict):
            result.output = in_stream_time(out, w.start_time)
            return result
        where = f"{w.start_time:.2f}-{w.end_time:.2f}"
        FAILURES.inc()
        if isinstance(out, models.ModelError):
            result.error = f"inference failed for {where}: {out}"
        else:
            with logs.bound(w.stream, logs.trace_of(w.trace)):
                log.error("model raised on %s: %r", where, out)
            result.error = f"inference failed for {where}: {type(out).__name__}"
        return result


def main(ctx: ChildContext) -> None:
    run_process(ctx, ModelActor)
