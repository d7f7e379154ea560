"""What an actor sees of the wire: wait for packets, take them, send them.

The actors are written against `Link`, so their logic runs in one process with
`MemoryLink` (tests: packets in and out as Python objects, no sockets, no clock) and in
production with `sockets.ZmqLink`. Both move encoded packets (bytes), so the codec is
exercised either way.

`send` never blocks: False means the packet could not go now (the peer is absent, or its
queue is full). The caller keeps it and tries again on a later turn; meanwhile it stops
reading its own input, which is how backpressure travels upstream without any process ever
sleeping inside a handler.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Sequence
from typing import Protocol

from streamer.transport.messages import Message, Packet, decode, encode
from streamer.transport.shm import BufferRef


class Link(Protocol):
    def wait(self, inboxes: Sequence[str], timeout_s: float) -> bool:
        """Block up to `timeout_s` until one of `inboxes` has a packet; True if one has. With no
        inbox to watch (all held back), it only lets the time pass."""
        ...

    def take(self, inbox: str, limit: int) -> list[bytes]:
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
