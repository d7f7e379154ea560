"""The front's own metrics, and `/metrics` for the whole group on one page.

Every process serves its own registry on loopback (`runtime.metrics`). Scraping six or
more ports is a chore, so the front's `/metrics` also fetches each of them (ports from the
supervisor's published table), labels every sample with the process's `role` and `index`,
merges families of the same name and appends its own: one scrape target is enough. A
process that does not answer within a second is left out of that scrape, and
`streamer_scrape_up{role,index}` says so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import aiohttp
import prometheus_client
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from streamer.runtime.group import Group
from streamer.transport.messages import Load

SESSIONS = prometheus_client.Gauge("streamer_front_sessions_active", "WebSocket sessions open now")
SESSIONS_TOTAL = prometheus_client.Counter("streamer_front_sessions", "WebSocket sessions accepted")
REFUSED = prometheus_client.Counter("streamer_front_sessions_refused", "WebSocket sessions refused, by reason",
                                    ["reason"])
FIRST_RESULT = prometheus_client.Histogram(
    "streamer_front_time_to_first_result_seconds", "From a stream's start to its first result",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
SPEECH_END_TO_FINAL = prometheus_client.Histogram(
    "streamer_front_speech_end_to_final_seconds", "From a region's `inactive` to its final result, as sent",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))


class Tally(Collector):
    """A counter bumped on every client frame: a plain `int` the registry reads at each scrape.
    A `prometheus_client.Counter` takes a lock per increment (about 0.6 µs: 2 % of what a shard
    spends on a frame, bench/profile.py), and only this process's loop ever adds to these."""

    def __init__(self, name: str, documentation: str) -> None:
        self.value = 0
        self._name = name
        self._documentation = documentation
        prometheus_client.REGISTRY.register(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)


AUDIO_FRAMES = Tally("streamer_front_audio_frames", "Binary audio frames taken from clients")
AUDIO_FEEDS = Tally(
    "streamer_front_audio_feeds", "Audio messages into the pipeline: frames that came in one read go as one "
    "(frames / feeds is what `[front] read_hold_ms` gathers)")
READ_HOLDS = prometheus_client.Counter("streamer_front_read_holds", "Times a client's socket was left unread for "
                                       "`[front] read_hold_ms` after an audio frame")
PEAK_INFLIGHT = prometheus_client.Histogram(
    "streamer_front_stream_peak_inflight_seconds", "Most audio a stream had sent and not yet answered",
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120))


class LoadMetrics:
    """What admission decides by (`front/admission.py`), as this front last heard it (every
    shard's reports combined): with these and the refusals by rule, a 503 can be explained from
    `/metrics` alone."""

    def __init__(self) -> None:
        g, c = prometheus_client.Gauge, prometheus_client.Counter
        self.reports = c("streamer_front_load_reports", "Load reports heard from the segmenters (two a second each)")
        self.streams = g("streamer_front_load_streams", "Streams open in the segmenters, as of the last load reports")
        self.actors = g("streamer_front_load_actors", "Model actors (live or restarting), as of the last load "
                        "report")
        self.busy = g("streamer_front_load_busy", "Model actors' seconds in model calls per second over the last "
                      "5 s (1 = one actor always busy), as of the last load report")
        self.per_stream = g("streamer_front_load_per_stream", "Model seconds a stream costs per second of its "
                            "answered audio (0 until known), as of the last load report")
        self.queue_delay = g("streamer_front_load_queue_delay_seconds", "How long the oldest final had waited for a "
                             "model actor, as of the last load report")
        self.queued_audio = g("streamer_front_load_queued_audio_seconds", "Audio waiting for a model actor, as of "
                              "the last load report")
        self.sessions = g("streamer_front_admission_sessions", "Sessions open over every front, as admission "
                          "counts them (the seats file)")
        self.refused = c("streamer_front_admission_refusals", "Sessions refused for load, by rule: behind (a "
                         "final waited past max_queue_delay_s), busy (past max_busy), demand (one more stream "
                         "would be past max_busy)", ["rule"])
        self.max_busy = g("streamer_front_admission_max_busy", "[admission] max_busy: the share of the model "
                          "actors' time admission fills")
        self.max_queue_delay = g("streamer_front_admission_max_queue_delay_seconds", "[admission] "
                                 "max_queue_delay_s")

    def limits(self, max_busy: float, max_queue_delay_s: float) -> None:
        self.max_busy.set(max_busy)
        self.max_queue_delay.set(max_queue_delay_s)

    def heard(self, load: Load) -> None:
        self.reports.inc()
        self.streams.set(load.streams)
        self.actors.set(load.actors)
        self.busy.set(load.busy)
        self.per_stream.set(load.per_stream)
        self.queue_delay.set(load.queue_delay_s)
        self.queued_audio.set(load.queued_audio_s)


LOAD = LoadMetrics()


async def _fetch(http: aiohttp.ClientSession, host: str, port: int) -> str | None:
    try:
        async with http.get(f"http://{host}:{port}/metrics", timeout=aiohttp.ClientTimeout(total=1.0)) as r:
            return await r.text() if r.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


def _merge(pages: list[tuple[dict[str, str], str]]) -> str:
    """Exposition text of every page, each sample labelled with its process, families merged."""
    families: dict[str, Any] = {}
    for labels, text in pages:
        for fam in text_string_to_metric_families(text):
            into = families.get(fam.name)
            if into is None:
                into = families[fam.name] = fam
                samples = list(fam.samples)
                fam.samples = []
            else:
                samples = list(fam.samples)
            into.samples.extend(Sample(s.name, {**s.labels, **labels}, s.value, s.timestamp, s.exemplar)
                                for s in samples)
    return prometheus_client.generate_latest(_Static(list(families.values()))).decode()


class _Static:
    """A collector that yields fixed families (the shape `generate_latest` wants)."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families


def process_role(process: str) -> str:
    """A page's `role` label: the roles of its process's actors without their shard's number
    (`front-1+decoder-1+segmenter-1` is `front+decoder+segmenter`, its `index` says which), as its
    spans' `streamer.role`, so one query covers every shard."""
    return "+".join(re.sub(r"-\d+$", "", name) for name in process.split("+"))


async def group_page(host: str, state: Group | None, own_index: int) -> str:
    """All processes' metrics, labelled by role and index (this front's own included, read in
    process; the other fronts' fetched like every other process)."""
    targets: list[tuple[dict[str, str], int]] = []
    if state is not None and state.metrics_port:
        targets.append(({"role": "supervisor", "index": "0"}, state.metrics_port))
    # Actors that share a process share its page: read it once, named by the process; this front's
    # own process (its actors too, in a shard) is read in process, below.
    mine = [a for a in state.actors if a.role == "front" and a.index == own_index] if state else []
    seen: set[int] = {a.metrics_port for a in mine if a.metrics_port}
    own_role = next((process_role(a.process) for a in mine if a.process), "front")
    for a in state.actors if state is not None else []:
        if a.metrics_port and a.metrics_port not in seen and not (a.role == "front" and a.index == own_index):
            seen.add(a.metrics_port)
            targets.append(({"role": process_role(a.process) if a.process else a.role, "index": str(a.index)},
                            a.metrics_port))
    async with aiohttp.ClientSession() as http:
        texts = await asyncio.gather(*(_fetch(http, host, port) for _, port in targets))
    pages = [({"role": own_role, "index": str(own_index)}, prometheus_client.generate_latest().decode())]
    up_lines = []
    for (labels, _), text in zip(targets, texts, strict=True):
        if text is not None:
            pages.append((labels, text))
        up_lines.append(f'streamer_scrape_up{{role="{labels["role"]}",index="{labels["index"]}"}} '
                        f'{0 if text is None else 1}')
    up = "# HELP streamer_scrape_up Whether the front could read this process's metrics\n" \
         "# TYPE streamer_scrape_up gauge\n" + "\n".join(up_lines) + "\n"
    return _merge(pages) + up
