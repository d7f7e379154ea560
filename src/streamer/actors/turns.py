"""Whose turn it is to hand a model actor its next packet, when several shards share it.

Each shard's dispatcher counts a model actor's credit for its own packets only. Left at that,
every shard with a final waiting would send at the moment an actor comes free, and all but one
of those packets would wait a whole call there, though another actor might come free sooner:
the busy model kept real time for fewer streams with two shards than with one
(bench/results/capacity-credit.md). One shard has one queue and no such race.

So a shard that holds a final back, every actor it may use being busy with another shard's
work, asks those actors for a turn (`Want`), and each actor gives its turns out one at a time:

* as a call begins every shard hears whose it is (`Running`), and counts the actor busy;
* as it ends, the `Done` frees the actor for the shard it answers, as with one shard; but if a
  shard has asked, the turn is that one's (`GRANTED`, the askers in turn round from the shard
  just served, so none waits behind another that always has work), and whoever counts the
  actor free hears `BUSY`; so does anyone who counts it free while the next packet already
  waits here (then a turn goes only to a shard that has asked for `OFFER_S`: no shard keeping
  packets queued here can hold an asker off for ever);
* a shard given a turn sends one packet or passes (`Pass`: its final went elsewhere), and the
  turn goes to the next asker; a turn not taken within `OFFER_S` (its shard died or is
  restarting) lapses, and that shard hears `BUSY`.

Nothing more is said when nobody asks: a lightly loaded group pays one `Running` per call, as it
did before turns. With one shard nothing at all is said: its credit is the whole actor's.
"""

from __future__ import annotations

from streamer.transport.messages import BUSY, GRANTED

OFFER_S = 0.2  # a turn not taken this long lapses (its shard is gone or restarting)
Say = tuple[int, int]  # (shard, what it is told: the index of the shard whose call begins, BUSY or GRANTED)


class Turns:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self.holder: int | None = None  # the shard whose turn it is
        self.offered_at = 0.0
        self.wanting: dict[int, float] = {}  # shards that asked for a turn, and when
        self._free = set(range(shards))  # shards that count the actor free (a new dispatcher does)
        self._after = 0  # turns go round starting after this shard

    def began(self, shard: int) -> list[Say]:
        """A call of `shard`'s packet begins: everyone hears whose it is."""
        self.holder = None
        self._free.clear()
        self._after = shard
        return [(k, shard) for k in range(self.shards)]

    def answered(self, shard: int) -> None:
        """`shard` was sent its `Done`: it counts the actor free."""
        self._free.add(shard)

    def want(self, shard: int, now: float) -> None:
        self.wanting.setdefault(shard, now)

    def passed(self, shard: int) -> None:
        """The shard whose turn it was had nothing to send (it counts the actor busy now)."""
        if self.holder == shard:
            self.holder = None

    def forgotten(self, shard: int) -> None:
        """A new segmenter of `shard` said `Forget`: it asked for nothing, and counts the actor free."""
        self.wanting.pop(shard, None)
        self._free.add(shard)
        if self.holder == shard:
            self.holder = None

    def settle(self, waiting: bool, now: float) -> list[Say]:
        """At the end of a turn of the actor's loop: what the shards must be told. `waiting`: a
        packet waits here (the next call is here already; its turn, if given, stays given). Then
        a turn goes only to a shard that has asked for `OFFER_S` and more: one that keeps a
        packet queued here (a credit of two, or interims, which ask for no turn) would otherwise
        have every call end with something waiting, and the asker would never be served."""
        out: list[Say] = []
        if self.holder is not None:
            if now - self.offered_at < OFFER_S:
                return self._busy(self._free) if waiting else []
            out.append((self.holder, BUSY))  # lapsed: it must not send on a turn now given on
            self.holder = None
        turn = next((k for k in self._round() if k in self.wanting
                     and (not waiting or now - self.wanting[k] >= OFFER_S)), None)
        if turn is None:
            return [*out, *self._busy(self._free)] if waiting else out
        del self.wanting[turn]
        self.holder, self.offered_at = turn, now
        return [*out, *self._busy(self._free - {turn}), (turn, GRANTED)]

    def _busy(self, shards: set[int]) -> list[Say]:
        said = [(k, BUSY) for k in sorted(shards)]
        self._free -= shards
        return said

    def _round(self) -> list[int]:
        n = self.shards
        return [(self._after + 1 + i) % n for i in range(n)]
