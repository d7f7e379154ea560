"""Prometheus in every process: its own registry, its own loopback `/metrics`, set up after it starts.

prometheus_client's multiprocess mode shares files between forked workers; here every
process is spawned and serves its own metrics on `[metrics] host` (loopback by default),
at `base_port` + its index in the topology (`Topology.metrics_port`), or an ephemeral port
when `base_port` is 0. It tells the supervisor the port it got, the
supervisor publishes it, and the front's `/metrics` gathers every process into one page
labelled by role and index, so one scrape target is enough.

`StageMeter` is what every stage measures the same way: items processed, the real-time
factor of its work (busy seconds per audio second), and a summary for the heartbeat that
`/api/v1/actors` and `streamer top` show. Its metrics carry the stage's name (`stage="decoder"`):
a process may run several actors (docs/placement.md), and theirs must not add up.
"""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from streamer.runtime.config import Config
from streamer.runtime.topology import Place, Topology

RTF_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

RTF = Histogram("streamer_stage_rtf", "Real-time factor of this stage's work (busy s / audio s), per model call "
                "or per heartbeat of a stage",
                labelnames=["stage"], buckets=RTF_BUCKETS)
PROCESSED = Counter("streamer_stage_items", "Items this stage finished (chunks, frames, inferences)", ["stage"])
BUSY = Counter("streamer_stage_busy_seconds", "Wall seconds this stage spent working on items", ["stage"])
AUDIO = Counter("streamer_stage_audio_seconds", "Seconds of audio this stage worked through", ["stage"])
QUEUED = Gauge("streamer_stage_queue_depth", "Items waiting in this stage for a worker (not yet handed out)")
INFLIGHT = Gauge("streamer_stage_inflight", "Items this stage holds now (streams, queued or running work)",
                 ["stage"])
STREAM_CRASHES = Counter("streamer_stream_crashes", "Streams this process failed because handling them raised "
                         "(the process went on with the others)")
POOL_USED = Gauge("streamer_pool_used_slots", "Shared-memory slots in use in a pool this process produces into",
                  ["pool"])
POOL_SLOTS = Gauge("streamer_pool_slots", "Shared-memory slots of a pool this process produces into", ["pool"])


def serve(cfg: Config, place: Place | None = None) -> int:
    """Start this process's `/metrics` server on loopback; returns the port it listens on.

    A configured port already taken (a second server on the machine) falls back to an
    ephemeral one: the port is published either way, and a metrics port is never worth a crash.
    """
    port = Topology(cfg).metrics_port(place)
    try:
        server, _ = prometheus_client.start_http_server(port, addr=cfg.metrics.host)
    except OSError as e:
        logging.getLogger("metrics").warning("metrics port %d unavailable (%s): using an ephemeral one", port, e)
        server, _ = prometheus_client.start_http_server(0, addr=cfg.metrics.host)
    return int(server.server_port)


class StageMeter:
    """One stage's running totals, read by Prometheus and by the heartbeat.

    A stage adds work as it goes (`add`, a few attribute updates) and Prometheus hears of it
    once per heartbeat (`publish`, from `summary`): its counters and locks cost more than the
    work of a 20 ms frame. A model call is heavy enough to be published at once (`done`)."""

    def __init__(self, stage: str) -> None:
        self.processed = 0
        self.busy_s = 0.0
        self.audio_s = 0.0
        self.inflight = 0
        self._items = 0  # since the last publish
        self._busy = 0.0
        self._audio = 0.0
        self._processed = PROCESSED.labels(stage)
        self._busy_total = BUSY.labels(stage)
        self._audio_total = AUDIO.labels(stage)
        self._rtf = RTF.labels(stage)
        self._inflight = INFLIGHT.labels(stage)

    def add(self, busy_s: float, audio_s: float, items: int = 1) -> None:
        """Record work done: `items` items that took `busy_s` and covered `audio_s` of audio."""
        self._items += items
        self._busy += busy_s
        self._audio += audio_s

    def done(self, busy_s: float, audio_s: float, items: int = 1) -> None:
        self.add(busy_s, audio_s, items)
        self.publish()

    def publish(self) -> None:
        """Hand what was added since the last call to Prometheus (the real-time factor is observed
        once per call: per model call, or per heartbeat of a stage)."""
        if not self._items:
            return
        self.processed += self._items
        self.busy_s += self._busy
        self.audio_s += self._audio
        self._processed.inc(self._items)
        self._busy_total.inc(self._busy)
        self._audio_total.inc(self._audio)
        if self._audio > 0:
            self._rtf.observe(self._busy / self._audio)
        self._items, self._busy, self._audio = 0, 0.0, 0.0

    def set_inflight(self, n: int) -> None:
        self.inflight = n
        self._inflight.set(n)

    def summary(self) -> dict[str, Any]:
        self.publish()
        rtf = self.busy_s / self.audio_s if self.audio_s > 0 else None
        return {"processed": self.processed, "inflight": self.inflight,
                "rtf": None if rtf is None else round(rtf, 5)}


def watch_pool(name: str, used: int, slots: int) -> None:
    POOL_USED.labels(name).set(used)
    POOL_SLOTS.labels(name).set(slots)
