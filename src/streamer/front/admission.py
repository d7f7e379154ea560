"""Who gets in: sessions are admitted by what the models can still do, not only by a count.

The segmenter tells every front, twice a second, what it sees (`Load`): live model actors,
how busy they were over the last seconds, what a stream costs them, and how long the oldest
final has waited for one. A new session is refused (HTTP 503 with Retry-After, before the
upgrade) when

* the oldest final of a stream still open has waited longer than `[admission]
  max_queue_delay_s` (the models are already behind: rule `behind`; finals of streams
  already stopped are left out, see `Load`), or
* the model actors are already busier than `[admission] max_busy` of their time (`busy`),
  or one more stream would make them so (`demand`): (sessions + 1) x per-stream demand >
  max_busy x actors. The per-stream demand is learned from the audio that streams' finals
  have answered (from a stream's first final on).

`sessions` is not the report's count of streams but the sessions open now over every front,
from the seats file (`front/seats.py`), read under its lock in the same step that takes the
newcomer's seat. A report is up to half a second old when it arrives, and the sessions a
front admitted or ended since cannot be reconciled with it exactly: a session that never
sent `start` was never in it, and one whose `stop` reached the segmenter first has left it
while its front still holds it. Keeping "admitted since the report" and "ended since" beside
it let sockets opened before a report and closed after it, without `start`, drive the count
below zero, and the server then admitted past its capacity. The fronts' own counts have no
such lag: each front knows its sessions exactly, the seats file is current to the last
handshake on every front, and reading it under the lock that takes the seat means two fronts
admitting at once see each other. A session counts from the handshake that admits it until
it ends, with or without a stream running: it may send `start` at any moment, so its share is
kept for it (sockets that never do are bounded by `idle_timeout_s` and `max_sessions`).

With several shards each segmenter reports what it asks of the shared model actors: a front
admits by all the reports at once (`combined`): the busy time and the streams add up, the
longest wait counts, the cost of a stream is the streams' average.

So the streams already admitted keep real time: a server past its capacity says "later"
to newcomers instead of making everyone late. Before there is anything to measure (no report
yet, no stream's cost known, models idle) everyone is admitted, up to `[limits] max_sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from streamer.front.front_metrics import LOAD
from streamer.runtime.clock import Clock, MonotonicClock
from streamer.transport.messages import Load

Rule = Literal["behind", "busy", "demand"]
STALE_S = 5.0  # a shard's report older than this no longer counts (they come twice a second)


@dataclass(frozen=True)
class Refusal:
    rule: Rule  # the metric's label
    text: str


class Admission:
    def __init__(self, max_busy: float, max_queue_delay_s: float, clock: Clock | None = None) -> None:
        self.max_busy = max_busy
        self.max_queue_delay_s = max_queue_delay_s
        self.load: Load | None = None  # every shard's, combined
        self._reports: dict[int, tuple[float, Load]] = {}  # by shard: when heard, what
        self._clock = clock or MonotonicClock()
        LOAD.limits(max_busy, max_queue_delay_s)

    def update(self, load: Load) -> None:
        now = self._clock.now()
        self._reports[load.shard] = (now, load)
        # A shard whose segmenter is down (or restarting) stops reporting: its last word would
        # otherwise go on deciding for every front.
        for shard, (heard, _) in list(self._reports.items()):
            if now - heard > STALE_S:
                del self._reports[shard]
        self.load = combined([r for _, r in self._reports.values()])
        LOAD.heard(self.load)

    def refusal(self, sessions: int) -> Refusal | None:
        """Why one more session may not come in while `sessions` are open over every front, or
        None to admit it."""
        load = self.load
        if load is None:
            return None
        if load.queue_delay_s > self.max_queue_delay_s:
            return Refusal("behind", f"the models are behind (a final has waited {load.queue_delay_s:.1f} s)")
        room = self.max_busy * load.actors
        if load.busy > room:
            return Refusal("busy", f"the models are at capacity ({100 * load.busy / max(1, load.actors):.0f}% busy)")
        if load.per_stream > 0 and (sessions + 1) * load.per_stream > room:
            return Refusal("demand", f"the models are at capacity ({sessions} streams at "
                                     f"{load.per_stream:.2f} model-s/s each)")
        return None


def combined(reports: list[Load]) -> Load:
    """What the shared model actors are asked to do by every shard's segmenter at once."""
    if len(reports) == 1:
        return reports[0]
    streams = sum(r.streams for r in reports)
    costed = sum(r.costed_s for r in reports)  # a shard whose streams have no cost known yet adds none
    per_stream = sum(r.per_stream * r.costed_s for r in reports) / costed if costed else 0.0
    return Load(streams, max(r.actors for r in reports), round(sum(r.busy for r in reports), 4), round(per_stream, 4),
                max(r.queue_delay_s for r in reports), round(sum(r.queued_audio_s for r in reports), 3),
                costed_s=round(costed, 3))
