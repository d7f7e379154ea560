"""Sequential streams: each one's audio goes to one model actor, in order, and outlives it.

A stateful model keeps a state per stream, so a stream is bound to one model actor (the one
with the fewest bound streams when its first item goes out) and every item of it goes there,
in order: a `Restore` per channel first (a fresh state, or the one a checkpoint describes),
then its `Feed`s, then a `CloseChannel` per channel; or, if the client leaves, a `Drop`.

What a death costs: the actor's `Done` carries the checkpoints its model reached (`Point`:
after item N, channel C's state is S at sample P, with F finals made). Here every item handed
out since a channel's last checkpoint is kept (`since`), and that checkpoint as a `Restore`
item. When that actor's process dies, the stream is bound again, to the least loaded live actor,
and gets the restores and everything since once more: the new actor rebuilds the state and
makes again the results after the checkpoint, which the front already has or takes now (it
drops what it has: same `seq`). Results equal an undisturbed run; the memory this costs is
the audio since the last checkpoint (a model's final, or a moment it is at rest).

A stream whose actors keep dying while running its work, with no checkpoint in between, is
given up at the `max_attempts`-th such death, as any item is: `failed` names it (and its front:
it may be closed already, its front still waiting for its end), and the segmenter fails it
there. A death while none of the stream's work was on the actor (another stream's poison, an
operator, the kernel) moves the stream but costs it no attempt: it cannot have caused it.

A replay after the decoder or the segmenter died (`reset`) starts the stream again from the
front's checkpoint, on the same actor. What its actor still answers for work from before it
(numbered below the stream's `floor`) says nothing about the replay: a checkpoint of it would
restore the stream past audio the replay sends again, and a close of it would end the stream
with the replay's own work still to come.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeGuard, TypeVar

import numpy as np
import numpy.typing as npt

from streamer.transport.messages import ChannelWork, CloseChannel, Drop, Feed, Point, Restore, Stateful, Work

W = TypeVar("W", bound=Work, covariant=True)
T = TypeVar("T", bound=Work)
NO_AUDIO = np.zeros(0, np.float32)


@dataclass(frozen=True)
class Item(Generic[W]):
    """A work item and its audio (none for an item that carries none), while it waits, and until
    its `Done`."""

    work: W
    audio: npt.NDArray[np.float32] = field(default_factory=lambda: NO_AUDIO)
    queued_at: float = 0.0


def holds(item: Item[Work], kind: type[T]) -> TypeGuard[Item[T]]:
    """Whether `item`'s work is a `kind`."""
    return isinstance(item.work, kind)


@dataclass
class BoundStream:
    """One sequential stream, as the dispatcher holds it."""

    index: int | None = None
    waiting: deque[Item[Stateful]] = field(default_factory=deque)  # not handed out yet, in order
    # handed out since each channel's last checkpoint:
    since: list[Item[Feed | CloseChannel]] = field(default_factory=list)
    restores: dict[int, Item[Restore]] = field(default_factory=dict)  # per channel: its last checkpoint
    deaths: int = 0  # of its actor while running its work, since its last checkpoint
    closed: int = 0  # channels whose close is done
    floor: int = 0  # work numbered below this is from before its last replay
    aborted: bool = False
    first: ChannelWork | None = None  # its first item: who the stream's results go to, how it is traced


class Bindings:
    def __init__(self, max_attempts: int) -> None:
        self.streams: dict[str, BoundStream] = {}
        self.max_attempts = max_attempts
        self.failed: list[tuple[str, int, str]] = []  # (stream, its front, why): given up on

    @property
    def waiting(self) -> int:
        return sum(len(b.waiting) for b in self.streams.values())

    @property
    def waiting_samples(self) -> int:
        return sum(i.audio.shape[0] for b in self.streams.values() for i in b.waiting)

    def submit(self, item: Item[Restore | Feed | CloseChannel]) -> None:
        b = self.streams.setdefault(item.work.stream, BoundStream())
        b.first = b.first or item.work
        if holds(item, Restore):
            b.restores[item.work.channel] = item
        b.waiting.append(item)

    def reset(self, stream: str, floor: int) -> None:
        """The stream starts again from a checkpoint (a replay after the decoder or segmenter
        died): what waits is superseded by the restores that follow, numbered from `floor` on.
        It stays on its actor, so those come after whatever that actor still has of it."""
        b = self.streams.get(stream)
        if b is not None:
            b.waiting.clear()
            b.since.clear()
            b.restores.clear()
            b.deaths = b.closed = 0
            b.floor = floor

    def abort(self, stream: str, work_id: int, now: float) -> None:
        """Forget the stream; the actor holding its state is told so (`Drop`, numbered `work_id`)."""
        b = self.streams.get(stream)
        if b is None:
            return
        if b.index is None:
            del self.streams[stream]
            return
        assert b.first is not None
        b.waiting = deque([Item(Drop(work_id=work_id, stream=stream, front=b.first.front), queued_at=now)])
        b.since.clear()
        b.restores.clear()
        b.aborted = True

    # -- handing out ------------------------------------------------------------------------------

    def bind(self, live: Iterable[int]) -> None:
        """Give every stream that has items and no actor the live actor with the fewest streams."""
        indices = list(live)
        if not indices:
            return
        load = {s: 0 for s in indices}
        for b in self.streams.values():
            if b.index in load:
                load[b.index] += 1
        for b in self.streams.values():
            if b.index is None and b.waiting:
                b.index = min(indices, key=lambda s: load[s])
                load[b.index] += 1

    def take(self, index: int, limit: int, max_bytes: int) -> list[Item[Stateful]]:
        """Up to `limit` items for `index` with at most `max_bytes` of audio (one item, however large),
        each stream's in order. A stream that a death has counted against since its checkpoint
        (a suspect) shares its packet with no other: should its work kill the next actor too,
        that death counts against no innocent stream (as a suspect item travels alone)."""
        out: list[Item[Stateful]] = []
        size = 0
        alone = False
        for b in self.streams.values():
            if b.index != index or not b.waiting:
                continue
            if out and (alone or b.deaths):
                break
            alone = b.deaths > 0
            while b.waiting and len(out) < limit:
                size += b.waiting[0].audio.nbytes
                if out and size > max_bytes:
                    return out
                out.append(b.waiting.popleft())
        return out

    def handed(self, items: list[Item[Stateful]]) -> None:
        for item in items:
            b = self.streams.get(item.work.stream)
            if b is not None and (holds(item, Feed) or holds(item, CloseChannel)):
                b.since.append(item)

    def put_back(self, items: list[Item[Stateful]]) -> None:
        """Items that could not go (the actor vanished): back to the head, in order."""
        for item in reversed(items):
            b = self.streams.get(item.work.stream)
            if b is not None:
                b.waiting.appendleft(item)

    # -- what comes back --------------------------------------------------------------------------

    def done(self, index: int, works: list[Stateful], points: list[Point]) -> None:
        for p in points:
            b = self.streams.get(p.stream)
            if b is None or b.index != index or p.work_id < b.floor:
                continue  # from an actor this stream has left, or from before its replay: not ours to trust
            b.since = [i for i in b.since if i.work.channel != p.channel or i.work.work_id > p.work_id]
            f = b.first
            assert f is not None
            b.restores[p.channel] = Item(Restore(
                work_id=p.work_id, stream=p.stream, front=f.front, trace=f.trace, channel=p.channel,
                channels=f.channels, sample=p.sample, finals=p.finals, state=p.state))
            b.deaths = 0
        for w in works:
            b = self.streams.get(w.stream)
            if b is None:
                continue
            if isinstance(w, CloseChannel) and w.work_id >= b.floor:
                b.closed += 1
            if isinstance(w, Drop) or b.closed >= (b.first.channels if b.first else 1):
                del self.streams[w.stream]

    def on_death(self, index: int, running: set[str]) -> None:
        """The actor's process died: its streams go elsewhere, from their checkpoints. Those in
        `running` had work on it, unanswered: the death counts against them."""
        for stream, b in list(self.streams.items()):
            if b.index != index:
                continue
            b.index = None
            if b.aborted:
                del self.streams[stream]
                continue
            b.deaths += stream in running
            if b.deaths >= self.max_attempts:
                assert b.first is not None
                self.failed.append((stream, b.first.front, f"the model actor holding this stream died {b.deaths} "
                                                           "times without getting any further"))
                del self.streams[stream]
                continue
            b.waiting = deque([*(b.restores[ch] for ch in sorted(b.restores)), *b.since, *b.waiting])
            b.since = []
            b.closed = 0

