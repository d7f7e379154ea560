"""Packing items into packets, and the packets that wait for room: one way for every sender.

Every process that sends audio does the same three things: gather the items for one
destination, write all of their audio into one allocation of its own pool (filling in each
item's `at`), encode the packet. `pack` is that, once, and an `Outbox` is the one way to send
what it makes: actors (`emit`), the front's `Pipeline` and the segmenter's dispatcher all hold
one (a test rig calls `pack` to stand in for a peer).

An `Outbox` keeps, per destination and in order, the items not yet sent. A packet holds at
most `max_bytes` of audio, so however much a turn produces, no packet can outgrow the pool:
one stream's burst (a client uploading a file at full speed, a replay of a minute of audio)
becomes several packets that go as the pool frees, never one allocation that can never fit.
A payload that is larger than the whole pool is refused when it is put (`TooLarge`), inside
the handler of the item that made it, so the actor fails that stream, not itself.

What cannot go now (the pool is full, the peer's queue is full, the peer is absent) stays at
the head of its destination's queue and everything for that destination waits behind it:
the sender stops reading its own input meanwhile, which is how backpressure travels
upstream. Nothing is dropped except by `discard`, at stop, which gives back the slabs.

A destination in the same process (`local`, see `transport/link.py`) gets the same packets in
the same order, only not packed: `hand` gives it the items and their audio as they are (no
slab, no encoding), and a full local inbox holds them back like a full socket.

`offer` is the other way to send, for a sender that keeps its items itself and must know at
once whether they went: one packet, now or not at all, nothing left waiting. The dispatcher
sends work so (`actors/dispatch.py` says why a model actor's packet must never wait here).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from streamer.transport.link import Handed, hand_over
from streamer.transport.messages import Message, Packet, Slice, encode
from streamer.transport.shm import BufferPool, BufferRef, Payload

ALIGN = 8  # every payload starts on an 8-byte boundary of the slab (float32 and int16 views need it)


class TooLarge(ValueError):
    """A payload larger than the pool it must be written into: it can never go."""


def nbytes(payload: Payload) -> int:
    return len(payload) if isinstance(payload, bytes) else payload.nbytes


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def pack(pool: BufferPool | None, items: Sequence[Message],
         payloads: list[tuple[int, Payload]]) -> tuple[bytes, BufferRef | None] | None:
    """One encoded packet of `items` and its slab: the payloads (item index, bytes) written into one
    allocation of `pool`, each such item's `at` filled in. None while the pool has no room (try
    again later)."""
    slab = None
    if payloads:
        if pool is None:
            raise TooLarge("this process has no pool to write audio into")
        written = pool.write_many([p for _, p in payloads])
        if written is None:
            return None
        slab, offsets = written
        for (i, p), offset in zip(payloads, offsets, strict=True):
            items[i].at = Slice(offset, nbytes(p))  # type: ignore[union-attr]
    return encode(Packet(slab, list(items))), slab


class Refused(enum.Enum):
    """Why `offer` sent nothing."""

    POOL_FULL = "the pool has no room for its audio"
    PEER = "the destination cannot take it now"


@dataclass(frozen=True)
class Went:
    """`offer` sent the packet. `slab` holds its audio (None: it had none): the receiver releases
    it once read, or the sender with `release` once the receiver is known to be dead."""

    slab: BufferRef | None


@dataclass
class _Pending:
    """Items for one destination not yet sent; `packet` once their audio is in the pool."""

    items: list[Message] = field(default_factory=list)
    payloads: list[tuple[int, Payload]] = field(default_factory=list)  # (index of the item, its bytes)
    size: int = 0  # of its audio, aligned
    packet: tuple[bytes, BufferRef | None] | None = None


class Outbox:
    def __init__(self, pool: BufferPool | None, send: Callable[[str, bytes], bool], max_bytes: int = 0,
                 hand: Callable[[str, Handed], bool] | None = None, local: Collection[str] = ()) -> None:
        self._pool = pool
        self._send = send
        self._hand = hand
        self._local = frozenset(local)
        assert hand is not None or not self._local, "local destinations need a hand to give to"
        capacity = pool.capacity if pool is not None else 0
        # A packet takes at most an eighth of the pool by default: several can be in flight at once.
        self.max_bytes = max_bytes or max(capacity // 8, 1)
        self._capacity = capacity
        self._queues: dict[str, list[_Pending]] = {}  # per destination, oldest first; only the last one open
        self.pending_bytes = 0  # audio put and not yet sent, every destination

    def put(self, dest: str, msg: Message, payload: Payload | None = None) -> None:
        """Queue `msg` for `dest`; `payload` goes into the packet's slab and `msg.at` says where."""
        size = aligned(nbytes(payload)) if payload is not None else 0
        if size > self._capacity and payload is not None:
            raise TooLarge(f"{size} bytes can never fit a pool of {self._capacity} bytes")
        queue = self._queues.get(dest)
        if queue is None:
            queue = self._queues[dest] = [_Pending()]
        last = queue[-1]
        if last.packet is not None or (size and last.size and last.size + size > self.max_bytes):
            last = _Pending()  # packed already and waiting, or full: this goes in the next one
            queue.append(last)
        if payload is not None:
            last.payloads.append((len(last.items), payload))
            last.size += size
            self.pending_bytes += size
        last.items.append(msg)

    def flush(self) -> bool:
        """Send every destination its pending packets, in order; True when nothing is left pending."""
        for dest, queue in list(self._queues.items()):
            while queue:
                head = queue[0]
                if dest in self._local:
                    assert self._hand is not None
                    if not self._hand(dest, hand_over(head.items, head.payloads)):
                        break  # its inbox is full: keep the items, try again later
                    queue.pop(0)
                    self.pending_bytes -= head.size
                    continue
                if head.packet is None:
                    head.packet = pack(self._pool, head.items, head.payloads)
                    if head.packet is None:
                        break  # the pool is full: keep the items, try again later
                if not self._send(dest, head.packet[0]):
                    break
                queue.pop(0)
                self.pending_bytes -= head.size
            if not queue:
                del self._queues[dest]
        return not self._queues

    def offer(self, dest: str, items: Sequence[Message], payloads: list[tuple[int, Payload]]) -> Went | Refused:
        """Send `items` to `dest` as one packet now, or nothing: what cannot go is the caller's
        again at once (its slab, if written, is given back), and nothing waits here. Never for a
        destination that `put` sends to: the two would not keep one order."""
        assert dest not in self._queues, f"{dest} has packets waiting: an offer would overtake them"
        assert dest not in self._local, "an offer goes to another process"
        packed = pack(self._pool, items, payloads)
        if packed is None:
            return Refused.POOL_FULL
        data, slab = packed
        if not self._send(dest, data):
            self.release(slab)
            return Refused.PEER
        return Went(slab)

    def release(self, slab: BufferRef | None) -> None:
        """Give back the allocation of a packet sent by `offer` whose receiver died (a no-op if it
        had read and released it)."""
        if slab is not None and self._pool is not None:
            self._pool.release(slab)

    @property
    def held(self) -> bool:
        """Something is waiting for room."""
        return bool(self._queues)

    def waiting_for(self) -> frozenset[str]:
        """The destinations something is waiting for."""
        return frozenset(self._queues)

    def pending(self, dest: str) -> int:
        """Items waiting for `dest`."""
        return sum(len(p.items) for p in self._queues.get(dest, ()))

    def discard(self) -> int:
        """Drop everything still waiting (at stop) and give back the slabs already written; the
        number of items dropped."""
        dropped = 0
        for queue in self._queues.values():
            for p in queue:
                dropped += len(p.items)
                if p.packet is not None and p.packet[1] is not None and self._pool is not None:
                    self._pool.release(p.packet[1])
        self._queues.clear()
        self.pending_bytes = 0
        return dropped
