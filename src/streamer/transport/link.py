"""What an actor sees of the wire: wait for packets, take them, send them.

The actors are written against `Link`, so their logic runs in one process with
`MemoryLink` (tests: packets in and out as Python objects, no sockets, no clock) and in
production with `sockets.ZmqLink`. Both move encoded packets (bytes), so the codec is
exercised either way.

`send` never blocks: False means the packet could not go now (the peer is absent, or its
queue is full). The caller keeps it and tries again on a later turn; meanwhile it stops
reading its own input, which is how backpressure travels upstream without any process ever
sleeping inside a handler.

Actors that share a process (`Topology.hosts`) each get a `HostLink`: a packet for a
co-located actor is `Handed` over, the items themselves and each item's audio as the sender
made it (no encoding, no pool, no socket), into that actor's `Local` inbox, which its next
step takes in the same turn of the process's loop; everything else goes over the process's one
real link. A local inbox is bounded like a socket's queue (packets, and bytes of audio), so a
consumer that holds its input back holds its producer back too. The actor cannot tell.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
import numpy as np

from streamer.transport.messages import Message, Packet, Slice, decode, encode
from streamer.transport.shm import BufferRef, Payload

LOCAL_PACKETS = 1000  # a local inbox's depth, as a ZeroMQ socket's default high-water mark


@dataclass
class Handed:
    """A packet handed to an actor of the same process: its items as the sender made them, and
    per item its audio (None: it has none). An item with audio says `at = Slice(0, n)`: its
    buffer is its own slab. The receiver owns the items and the audio views. An item without
    audio is a (shallow) copy of the sender's, which it may keep (a front keeps each stream's
    `Open` for a replay); an item with audio is the sender's own, given away with its audio (one
    per client frame, made to be sent: a copy of each would cost a shard 2 % of its CPU)."""

    items: list[Message]
    audio: list[memoryview | None]
    nbytes: int


def hand_over(items: Sequence[Message], payloads: Sequence[tuple[int, Payload]]) -> Handed:
    """What `pack` is for a socket, for a co-located peer: every payload becomes a read-only view
    of the sender's own array (no copy: a reader gets what a slab's bytes would have given it)."""
    given = {i for i, _ in payloads}  # the sender's to give away; the others it may keep (a front does)
    items = [item if i in given else msgspec.structs.replace(item) for i, item in enumerate(items)]
    audio: list[memoryview | None] = [None] * len(items)
    total = 0
    for i, payload in payloads:
        raw = np.ascontiguousarray(payload) if isinstance(payload, np.ndarray) else payload
        view = memoryview(raw).cast("B").toreadonly()  # type: ignore[arg-type]
        items[i].at = Slice(0, view.nbytes)  # type: ignore[union-attr]
        audio[i] = view
        total += view.nbytes
    return Handed(items, audio, total)


Raw = bytes | Handed  # what an inbox gives: an encoded packet, or one handed over in memory


class Link(Protocol):
    def wait(self, inboxes: Sequence[str], timeout_s: float) -> bool:
        """Block up to `timeout_s` until one of `inboxes` has a packet; True if one has. With no
        inbox to watch (all held back), it only lets the time pass."""
        ...

    def take(self, inbox: str, limit: int) -> Sequence[Raw]:
        """Up to `limit` packets waiting in `inbox`, oldest first; never blocks."""
        ...

    def send(self, dest: str, data: bytes) -> bool:
        """Hand one packet to `dest`'s inbox; False if it cannot go now."""
        ...

    def close(self) -> None: ...


class MemoryLink:
    """Every inbox a deque, every destination a list: an actor's whole conversation, in memory."""

    def __init__(self) -> None:
        self.inboxes: defaultdict[str, deque[bytes]] = defaultdict(deque)
        self.sent: defaultdict[str, list[bytes]] = defaultdict(list)
        self.order: list[str] = []  # the destination of every packet sent, in sending order
        self.refusing: set[str] = set()  # destinations whose send answers False (absent, full)

    def put(self, inbox: str, *items: Message, slab: BufferRef | None = None) -> None:
        """Queue one packet for the actor, as a peer would send it."""
        self.inboxes[inbox].append(encode(Packet(slab, list(items))))

    def packets(self, dest: str) -> list[Packet]:
        """What the actor sent to `dest`, oldest first (and forget it)."""
        out = [decode(raw) for raw in self.sent.pop(dest, [])]
        return out

    def items(self, dest: str) -> list[Message]:
        return [item for p in self.packets(dest) for item in p.items]

    def wait(self, inboxes: Sequence[str], timeout_s: float) -> bool:
        return any(self.inboxes[i] for i in inboxes)

    def take(self, inbox: str, limit: int) -> list[bytes]:
        q = self.inboxes[inbox]
        return [q.popleft() for _ in range(min(limit, len(q)))]

    def send(self, dest: str, data: bytes) -> bool:
        if dest in self.refusing:
            return False
        self.sent[dest].append(data)
        self.order.append(dest)
        return True

    def close(self) -> None:
        pass


class Local:
    """The in-memory inboxes of the actors of one process that co-located actors send to.

    Bounded like a socket's queue: at most `max_packets` packets, and per inbox at most its
    `limits` bytes of audio (its sender's pool's size: what it could have had in flight through
    the pool), so a consumer that holds its input back makes its producer wait, as a full pool
    or a full socket would."""

    def __init__(self, limits: dict[str, int], max_packets: int = LOCAL_PACKETS) -> None:
        self.queues: dict[str, deque[Handed]] = {name: deque() for name in limits}
        self.bytes = dict.fromkeys(self.queues, 0)
        self.limits = limits
        self.max_packets = max_packets
        self.handed = 0  # packets handed over in this process's life
        self.taken = 0  # ... and taken by their readers (room made for a held sender)

    def __contains__(self, inbox: object) -> bool:
        return inbox in self.queues

    def put(self, inbox: str, packet: Handed) -> bool:
        q = self.queues[inbox]
        full = self.bytes[inbox] and self.bytes[inbox] + packet.nbytes > self.limits[inbox]
        if len(q) >= self.max_packets or full:
            return False
        q.append(packet)
        self.bytes[inbox] += packet.nbytes
        self.handed += 1
        return True

    def take(self, inbox: str, limit: int) -> list[Handed]:
        q = self.queues[inbox]
        out = [q.popleft() for _ in range(min(limit, len(q)))]
        self.bytes[inbox] -= sum(p.nbytes for p in out)
        self.taken += len(out)
        return out

    def waiting(self, inboxes: Iterable[str]) -> bool:
        return any(self.queues[i] for i in inboxes if i in self.queues)

    def clear(self, inbox: str) -> int:
        """Drop what waits in `inbox` (its reader was replaced: this was the old one's), making
        room for its senders as taking it would; the packets dropped."""
        q = self.queues[inbox]
        dropped = len(q)
        q.clear()
        self.bytes[inbox] = 0
        self.taken += dropped
        return dropped


class HostLink:
    """`Link` for one actor of a process that runs several: inboxes in `local` are queues in
    memory, filled by the co-located actors' `hand`; the rest, and every send to another
    process, go over the process's one real link (`wire`, which the process closes)."""

    def __init__(self, wire: Link, local: Local) -> None:
        self.wire = wire
        self.local = local

    def wait(self, inboxes: Sequence[str], timeout_s: float) -> bool:
        if self.local.waiting(inboxes):
            return True
        return self.wire.wait([i for i in inboxes if i not in self.local], timeout_s)

    def take(self, inbox: str, limit: int) -> Sequence[Raw]:
        return self.local.take(inbox, limit) if inbox in self.local else self.wire.take(inbox, limit)

    def send(self, dest: str, data: bytes) -> bool:
        return self.wire.send(dest, data)

    def hand(self, dest: str, packet: Handed) -> bool:
        return self.local.put(dest, packet)

    def close(self) -> None:
        pass
