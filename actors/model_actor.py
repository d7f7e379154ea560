"""A model actor: takes `Work`, runs the model, answers the front, returns a credit.

The result goes to the front before `Done` goes to the segmenter: if the process dies
between the two, the item is redone and the front drops the duplicate, so an item is never
lost and a client never sees two answers for it. A stale buffer (its slots were reclaimed
after the segmenter restarted) is acknowledged and skipped: the stream it belonged to is
already answered with an error.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import prometheus_client
import zmq
from opentelemetry.trace import StatusCode

from actors import models
from actors.loop import attach, serve
from runtime import logs, telemetry
from runtime.metrics import StageMeter
from runtime.process import ChildContext, enter_child
from transport import sockets
from transport.messages import Done, Ready, Result, Work
from transport.shm import StaleBuffer

log = logging.getLogger("model")
_tracer = telemetry.tracer("streamer.model")
LATENCY = prometheus_client.Histogram("streamer_inference_seconds", "Wall time of one model call",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
FAILURES = prometheus_client.Counter("streamer_inference_failures", "Model calls that returned an error")

READY_EVERY_S = 1.0  # re-announce so a restarted segmenter learns this actor's credit


def answer(model: models.Model, work: Work, audio: np.ndarray, meter: StageMeter) -> Result:
    where = f"{work.start_time:.2f}-{work.end_time:.2f}"
    result = Result(work.stream, work.channel, work.seq, work.events_before,
                    work.start_time, work.end_time, work.is_final)
    attrs = {"streamer.work_id": work.work_id, "streamer.attempt": work.attempt, "streamer.channel": work.channel,
             "audio.start_time": work.start_time, "audio.end_time": work.end_time,
             "streamer.is_final": bool(work.is_final)}
    with _tracer.start_as_current_span("inference", context=telemetry.context_of(work.trace),
                                       attributes=attrs) as span, meter.timed() as t:
        t.audio_s = audio.shape[0] / 16000
        try:
            result.output = model.process(audio, work.is_final)
        except models.ModelError as e:
            result.error = f"inference failed for {where}: {e}"
        except Exception as e:  # a model bug must cost one item, not the process
            log.exception("model raised on %s", where)
            result.error = f"inference failed for {where}: {type(e).__name__}"
        if result.error is not None:
            FAILURES.inc()
            span.set_status(StatusCode.ERROR, result.error)
    LATENCY.observe(meter.last_busy_s)
    return result


def main(ctx: ChildContext) -> None:
    enter_child(ctx)
    cfg = ctx.cfg()
    model = models.build(cfg.model.name, ctx.config["model"], seed=os.getpid())
    pool = attach(ctx, "segmenter")
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    inp = sockets.inbox(zctx, ctx.run_dir, f"model-{ctx.slot}")
    front = sockets.outbox(zctx, ctx.run_dir, "front")
    ctl = sockets.outbox(zctx, ctx.run_dir, "segmenter-ctl")
    pid = os.getpid()
    hello = Ready(ctx.slot, pid, cfg.model.max_inflight)
    meter = StageMeter()
    ctx.stats = meter.summary

    def handle(_: dict[zmq.Socket[bytes], int]) -> None:
        msg = sockets.recv(inp)
        if not isinstance(msg, Work) or msg.buf is None:
            return
        with logs.bound(msg.stream, logs.trace_of(msg.trace)):
            try:
                audio = pool.read_array(msg.buf, np.float32, (msg.buf.nbytes // 4,))
            except StaleBuffer:
                log.info("work %d is stale (its segmenter restarted): skipped", msg.work_id)
                sockets.send(ctl, Done(ctx.slot, pid, msg.work_id))
                return
            meter.set_inflight(1)
            sockets.send(front, answer(model, msg, audio, meter))
            meter.set_inflight(0)
            sockets.send(ctl, Done(ctx.slot, pid, msg.work_id))

    last_hello = 0.0

    def idle() -> None:
        nonlocal last_hello
        now = time.monotonic()
        if now - last_hello >= READY_EVERY_S:
            sockets.send(ctl, hello)
            last_hello = now

    poller = zmq.Poller()
    poller.register(inp, zmq.POLLIN)
    ctx.ready()
    log.info("ready (model %s)", cfg.model.name)
    try:
        serve(ctx, poller, handle, idle)
    finally:
        zctx.destroy(linger=sockets.LINGER_MS)
