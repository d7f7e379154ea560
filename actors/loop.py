"""The shared shape of an actor process: attach pools, poll sockets, stop on SIGTERM."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import zmq

from runtime.layout import pool_specs
from runtime.process import ChildContext
from transport.shm import BufferPool, PoolFull

POLL_MS = 100
log = logging.getLogger(__name__)


def attach(ctx: ChildContext, name: str) -> BufferPool:
    return BufferPool.attach(pool_specs(ctx.cfg())[name], ctx.run_id)


def write_waiting(pool: BufferPool, payload: object, ctx: ChildContext) -> object:
    """Write into our pool, waiting while it is full (the backpressure point of a stage)."""
    delay = 0.0005
    while True:
        try:
            return pool.write(payload)  # type: ignore[arg-type]
        except PoolFull:
            if ctx.stopping.is_set():
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.02)


def serve(ctx: ChildContext, poller: zmq.Poller, handle: Callable[[dict[zmq.Socket[bytes], int]], None],
          idle: Callable[[], None] | None = None) -> None:
    """Poll until SIGTERM; `handle` gets the ready sockets, `idle` runs after every wake-up."""
    while not ctx.stopping.is_set():
        ctx.beat()
        events = dict(poller.poll(POLL_MS))
        if events:
            handle(events)
        if idle is not None:
            idle()
    log.info("stopping")
