"""Handing work to model actors by credit, not by blind round-robin.

A plain PUSH socket deals messages to its peers in turn, queues them for a dead peer and
loses whatever a dead peer had queued. Here each model slot has its own PUSH socket
(IMMEDIATE, so nothing queues for an absent peer) and at most `capacity` items in flight;
a slow actor therefore never sits on work an idle one could do, and every item handed out
is remembered until its `Done` arrives. Audio waits in this process's memory until an
actor has credit, and only then is written into the segmenter's pool; the buffer is
released on `Done`, so the pool holds at most models x capacity items.

In-flight semantics: when a slot's process dies (the supervisor's `Exited`, at once) or is
found replaced (a `Ready` from a new pid), every item it held is put back at the head of
the queue and sent again to whichever actor has credit, up to `max_attempts`; past that
the caller reports one error for it (`failed`). A late `Ready` or `Done` from a dead pid
is ignored.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import prometheus_client
import zmq
from opentelemetry.trace import StatusCode

from runtime import logs, telemetry
from transport import sockets
from transport.messages import Done, Ready, Work
from transport.shm import BufferPool, PoolFull

log = logging.getLogger("dispatch")
_tracer = telemetry.tracer("streamer.dispatch")
RETRIES = prometheus_client.Counter("streamer_dispatch_retries", "Work items sent again after their model actor died")
GAVE_UP = prometheus_client.Counter("streamer_dispatch_failures",
                                    "Work items answered with an error after max_attempts model deaths")


@dataclass
class Pending:
    """A work item not yet in shared memory (buf is filled in at dispatch)."""

    work: Work
    audio: npt.NDArray[np.float32] | None


@dataclass
class Slot:
    pid: int = 0
    capacity: int = 0
    inflight: dict[int, Work] = field(default_factory=dict)


class Dispatcher:
    def __init__(self, pool: BufferPool, outs: dict[int, zmq.Socket[bytes]], max_attempts: int = 3) -> None:
        self._pool = pool
        self._outs = outs
        self._slots = {i: Slot() for i in outs}
        self._queue: deque[Pending] = deque()
        self._queued_samples = 0
        self._dead: set[int] = set()
        self.max_attempts = max_attempts
        self.failed: list[Work] = []  # items past their attempts: the caller reports them

    @property
    def queued_seconds(self) -> float:
        return self._queued_samples / 16000

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return sum(len(s.inflight) for s in self._slots.values())

    def submit(self, work: Work, audio: npt.NDArray[np.float32]) -> None:
        self._queue.append(Pending(work, audio))
        self._queued_samples += audio.shape[0]

    def on_ready(self, msg: Ready) -> None:
        slot = self._slots.get(msg.slot)
        if slot is None or msg.pid in self._dead:
            return
        if slot.pid != msg.pid:
            if slot.pid:
                self._requeue(slot)
            slot.pid = msg.pid
        slot.capacity = msg.capacity

    def on_exit(self, slot_id: int, pid: int) -> None:
        """A model process died: its items go to the other actors now, not at its restart."""
        self._dead.add(pid)
        slot = self._slots.get(slot_id)
        if slot is None or slot.pid != pid:
            return
        self._requeue(slot)
        slot.pid, slot.capacity = 0, 0

    def on_done(self, msg: Done) -> None:
        slot = self._slots.get(msg.slot)
        if slot is None or slot.pid != msg.pid:
            return
        work = slot.inflight.pop(msg.work_id, None)
        if work is not None and work.buf is not None:
            self._pool.release(work.buf)

    def cancel(self, stream: str) -> None:
        """Forget a stream's queued items (its in-flight ones finish and are ignored)."""
        keep = deque(p for p in self._queue if p.work.stream != stream)
        self._queued_samples = sum(p.audio.shape[0] for p in keep if p.audio is not None)
        self._queue = keep

    def pump(self) -> None:
        """Send queued items to slots with credit, fewest in flight first."""
        while self._queue:
            slot_id = self._pick()
            if slot_id is None:
                return
            pending = self._queue[0]
            work = pending.work
            if pending.audio is not None:
                try:
                    work.buf = self._pool.write(pending.audio)
                except PoolFull:
                    return
            if not sockets.send(self._outs[slot_id], work, block=False):
                # The peer is not connected (dead, restarting): stop offering it work.
                self._slots[slot_id].capacity = 0
                if pending.audio is not None and work.buf is not None:
                    self._pool.release(work.buf)
                continue
            self._queue.popleft()
            if pending.audio is not None:
                self._queued_samples -= pending.audio.shape[0]
            self._slots[slot_id].inflight[work.work_id] = work

    def _pick(self) -> int | None:
        best: int | None = None
        best_load = 0
        for i, s in self._slots.items():
            load = len(s.inflight)
            if load < s.capacity and (best is None or load < best_load):
                best, best_load = i, load
        return best

    def _requeue(self, slot: Slot) -> None:
        items = sorted(slot.inflight.values(), key=lambda w: w.work_id, reverse=True)
        slot.inflight.clear()
        for work in items:
            with _tracer.start_as_current_span("redo", context=telemetry.context_of(work.trace), attributes={
                "streamer.work_id": work.work_id, "streamer.attempt": work.attempt, "streamer.lost_pid": slot.pid,
                "audio.start_time": work.start_time, "audio.end_time": work.end_time,
            }) as span, logs.bound(work.stream, logs.trace_of(work.trace)):
                if work.attempt >= self.max_attempts:
                    if work.buf is not None:
                        self._pool.release(work.buf)
                    self.failed.append(work)
                    GAVE_UP.inc()
                    span.set_status(StatusCode.ERROR, f"gave up after {work.attempt} attempts")
                    log.error("giving up on work %d after %d attempts", work.work_id, work.attempt)
                    continue
                work.attempt += 1
                RETRIES.inc()
                log.warning("redoing work %d (attempt %d): model pid %d died", work.work_id, work.attempt, slot.pid)
                self._queue.appendleft(Pending(work, None))
