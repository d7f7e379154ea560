"""Putting one stream's results back in audio order.

Model actors finish out of order; each result carries its position among the channel's
results (`seq`) and how many events preceded it (`events_before`). A result is released
when every earlier result of its channel is out and its preceding events are out (so a
final never overtakes its `inactive`). Events are released as they come: they arrive in
order from the segmenter and never wait for a slow model. A duplicate (an item redone
after a crash whose first answer did arrive) is dropped.
"""

from __future__ import annotations

from typing import Any

from transport.messages import Event, Result, StreamEnd


def render_event(e: Event) -> dict[str, Any]:
    return {"type": e.kind, "channel": e.channel, "time": round(e.time, 4)}


def render_result(r: Result) -> dict[str, Any]:
    if r.error is not None:  # names its region, so a client can match it like a final
        err: dict[str, Any] = {"type": "error", "channel": r.channel, "message": r.error,
                               "start_time": round(r.start_time, 4), "end_time": round(r.end_time, 4)}
        if r.is_final is not None:
            err["is_final"] = r.is_final
        return err
    out: dict[str, Any] = {"type": "segment", "channel": r.channel,
                           "start_time": round(r.start_time, 4), "end_time": round(r.end_time, 4)}
    if r.is_final is not None:
        out["is_final"] = r.is_final
    out.update(r.output or {})
    return out


class ChannelOrder:
    def __init__(self) -> None:
        self.released = 0  # results out
        self.events = 0  # events out
        self._held: dict[int, Result] = {}

    def event(self) -> list[Result]:
        self.events += 1
        return self._drain()

    def result(self, r: Result) -> list[Result]:
        if r.seq < self.released or r.seq in self._held:
            return []  # duplicate
        self._held[r.seq] = r
        return self._drain()

    @property
    def held(self) -> int:
        return len(self._held)

    def _drain(self) -> list[Result]:
        out: list[Result] = []
        while (r := self._held.get(self.released)) is not None and r.events_before <= self.events:
            del self._held[self.released]
            out.append(r)
            self.released += 1
        return out


class StreamOrder:
    """All channels of a stream, and whether everything announced has gone out."""

    def __init__(self, channels: int) -> None:
        self.channels = [ChannelOrder() for _ in range(channels)]
        self.end: StreamEnd | None = None

    def on_event(self, e: Event) -> list[dict[str, Any]]:
        ch = self.channels[e.channel]
        return [render_event(e)] + [render_result(r) for r in ch.event()]

    def on_result(self, r: Result) -> list[dict[str, Any]]:
        return [render_result(x) for x in self.channels[r.channel].result(r)]

    @property
    def complete(self) -> bool:
        if self.end is None:
            return False
        return all(c.released >= n and c.events >= m
                   for c, n, m in zip(self.channels, self.end.results, self.end.events, strict=True))
