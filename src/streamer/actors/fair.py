"""Finals waiting for a model actor, served in turn by channel rather than by arrival.

With one first-in-first-out queue, a stream that arrives with a minute of audio (a file
uploaded at full speed) stands in front of every stream behind it, and those hear nothing
until it is done: long enough for their stop timeout to give them up. So each channel of
each stream has its own queue, in
arrival order, and the channels take turns: the next item comes from the channel at the head
of the rotation, which then goes to the back. A stream's results keep coming at its share of
the models however many others are waiting, a live stream's final never waits behind an
upload's backlog, and within a channel results still go out in audio order.

An item put back (its call could not go, or its actor died) returns to the head of its
channel's queue, and its channel to the head of the rotation: it was already being served.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from streamer.actors.binding import Item
from streamer.transport.messages import Infer

Key = tuple[str, int]  # (stream, channel)


def channel_of(item: Item[Infer]) -> Key:
    return item.work.stream, item.work.channel


class FairQueue:
    def __init__(self) -> None:
        self._queues: dict[Key, deque[Item[Infer]]] = {}  # the rotation is the dict's order: the head is served next
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Item[Infer]]:
        for queue in self._queues.values():
            yield from queue

    def append(self, item: Item[Infer]) -> None:
        """A new item, behind its channel's others; a channel with nothing waiting joins the back
        of the rotation."""
        key = channel_of(item)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._count += 1

    def peek(self) -> Item[Infer]:
        """The item served next (the queue must not be empty)."""
        return next(iter(self._queues.values()))[0]

    def popleft(self) -> Item[Infer]:
        """Take the item served next; its channel goes to the back of the rotation."""
        key, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        del self._queues[key]
        if queue:
            self._queues[key] = queue
        self._count -= 1
        return item

    def appendleft(self, item: Item[Infer]) -> None:
        """Put an item back at the head of its channel's queue, and its channel at the head of the
        rotation."""
        key = channel_of(item)
        queue = self._queues.pop(key, None) or deque()
        queue.appendleft(item)
        self._queues = {key: queue, **self._queues}
        self._count += 1

    def keep(self, kept: Callable[[Item[Infer]], bool]) -> None:
        """Drop every item for which `kept` is False."""
        queues = {k: deque(i for i in q if kept(i)) for k, q in self._queues.items()}
        self._queues = {k: q for k, q in queues.items() if q}
        self._count = sum(len(q) for q in self._queues.values())

    def oldest(self, counts: Callable[[str], bool] = lambda _: True) -> Item[Infer] | None:
        """The item that has waited longest among the streams that `counts`."""
        heads = [q[0] for (stream, _), q in self._queues.items() if counts(stream)]
        return min(heads, key=lambda i: i.queued_at) if heads else None
