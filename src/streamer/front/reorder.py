"""Putting one stream's results back in audio order.

Model actors finish out of order. Each final (or chunk) carries its place among the
channel's finals (`seq`) and how many events preceded it (`events_before`); it is released
when every earlier final of its channel is out and its preceding events are out (so a final
never overtakes its `inactive`). Events are released as they come: they arrive in order
from the segmenter and never wait for a slow model.

Interims are best effort and never hold anything up. An interim carries the `seq` of the
final it comes before: it goes out once the finals before it are out, unless its own final
is already out or a newer interim of the region already went (then it is stale and
dropped). While it waits, a newer interim of the channel replaces it.

A duplicate (an item redone after a crash whose first answer did arrive, or an event or a
final that a replay makes again) is dropped.
"""

from __future__ import annotations

from typing import Any

from streamer.transport.messages import Event, Result, StreamEnd


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
        self.released = 0  # finals (or chunks) out
        self.events = 0  # events out
        self._held: dict[int, Result] = {}
        self._interim: Result | None = None  # the newest interim not yet out
        self._interim_out: tuple[int, float] = (-1, 0.0)  # (seq, end) of the last interim out

    def event(self) -> list[Result]:
        self.events += 1
        return self._drain()

    def result(self, r: Result) -> list[Result]:
        if r.is_final is False:
            return self._interim_result(r)
        if r.seq < self.released or r.seq in self._held:
            return []  # duplicate
        self._held[r.seq] = r
        return self._drain()

    def _interim_result(self, r: Result) -> list[Result]:
        if self._stale(r) or (self._interim is not None and self._interim.end_time >= r.end_time
                              and self._interim.seq == r.seq):
            return []
        self._interim = r
        return self._drain()

    def _stale(self, r: Result) -> bool:
        seq, end = self._interim_out
        return r.seq < self.released or (r.seq == seq and r.end_time <= end)

    @property
    def held(self) -> int:
        return len(self._held)

    def _drain(self) -> list[Result]:
        out: list[Result] = []
        while True:
            i = self._interim
            if i is not None and (self._stale(i) or (i.seq == self.released and i.events_before <= self.events)):
                self._interim = None
                if not self._stale(i):
                    self._interim_out = (i.seq, i.end_time)
                    out.append(i)
                continue
            r = self._held.get(self.released)
            if r is None or r.events_before > self.events:
                return out
            del self._held[self.released]
            out.append(r)
            self.released += 1


class StreamOrder:
    """All channels of a stream, and whether everything announced has gone out."""

    def __init__(self, channels: int) -> None:
        self.channels = [ChannelOrder() for _ in range(channels)]
        self.end: StreamEnd | None = None

    def on_event(self, e: Event) -> list[dict[str, Any]]:
        ch = self.channels[e.channel]
        if e.index < ch.events:
            return []  # sent already: a replay after a stage's death makes it again
        return [render_event(e)] + [render_result(r) for r in ch.event()]

    def on_result(self, r: Result) -> list[dict[str, Any]]:
        return [render_result(x) for x in self.channels[r.channel].result(r)]

    @property
    def complete(self) -> bool:
        if self.end is None:
            return False
        return all(c.released >= n and c.events >= m
                   for c, n, m in zip(self.channels, self.end.results, self.end.events, strict=True))
