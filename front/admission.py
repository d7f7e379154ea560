"""Who gets in: sessions are admitted by what the models can still do, not only by a count.

The segmenter tells every front, twice a second, what it sees (`Load`): open streams, live
model actors, how busy they were over the last seconds, and how long the oldest final has
waited for one. A new session is refused (HTTP 503 with Retry-After, before the upgrade)
when

* the oldest final has waited longer than `[admission] max_queue_delay_s` (the models are
  already behind: rule `behind`), or
* the model actors are already busier than `[admission] max_busy` of their time (`busy`),
  or one more stream would make them so (`demand`): (streams + 1) x per-stream demand >
  max_busy x actors.
  The per-stream demand is learned from the audio that streams' finals have answered (from a
  stream's first final on), and a burst of new streams counts in full before any of them
  has spoken. Sessions this front admitted since the last report count as streams already,
  and those that ended since as gone.

So the streams already admitted keep real time: a server past its capacity says "later"
to newcomers instead of making everyone late. Before there is anything to measure (no report
yet, no stream open, models idle) everyone is admitted, up to `[limits] max_sessions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from front.metrics import LOAD
from transport.messages import Load

Rule = Literal["behind", "busy", "demand"]


@dataclass(frozen=True)
class Refusal:
    rule: Rule  # the metric's label
    text: str


class Admission:
    def __init__(self, max_busy: float, max_queue_delay_s: float) -> None:
        self.max_busy = max_busy
        self.max_queue_delay_s = max_queue_delay_s
        self.load: Load | None = None
        self._since_report = 0
        LOAD.limits(max_busy, max_queue_delay_s)

    def update(self, load: Load) -> None:
        self.load = load
        self._since_report = 0
        LOAD.heard(load)
        LOAD.since_report.set(0)

    def refusal(self) -> Refusal | None:
        """Why a new session may not come in now, or None to admit it."""
        load = self.load
        if load is None:
            return None
        if load.queue_delay_s > self.max_queue_delay_s:
            return Refusal("behind", f"the models are behind (a final has waited {load.queue_delay_s:.1f} s)")
        room = self.max_busy * load.actors
        if load.busy > room:
            return Refusal("busy", f"the models are at capacity ({100 * load.busy / max(1, load.actors):.0f}% busy)")
        streams = max(0, load.streams + self._since_report)
        if load.per_stream > 0 and (streams + 1) * load.per_stream > room:
            return Refusal("demand", f"the models are at capacity ({streams} streams at {load.per_stream:.2f} "
                                     "model-s/s each)")
        return None

    def admitted(self) -> None:
        self._since_report += 1
        LOAD.since_report.set(self._since_report)

    def ended(self) -> None:
        """A session of this front is over: the last report may still count its stream, and
        counting it beside the newcomers refused clients at every turnover of sessions."""
        self._since_report -= 1
        LOAD.since_report.set(self._since_report)
