"""The outbox's two ways to send on their own: `put` and `flush` hold a packet back until it can
go; `offer` sends one now or nothing, and leaves nothing behind (the dispatcher's way)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import numpy as np
import pytest

from streamer.transport.link import MemoryLink
from streamer.transport.messages import NOWHERE, Forget, Frames, decode
from streamer.transport.outbox import Outbox, Refused, Went
from streamer.transport.shm import BufferPool, PoolSpec

SPEC = PoolSpec("t", slot_size=1024, nslots=8)


@pytest.fixture
def pool() -> Iterator[BufferPool]:
    p = BufferPool.create(SPEC, secrets.token_hex(4))
    try:
        yield p
    finally:
        p.close()
        p.unlink()


def frames(n: int) -> tuple[Frames, np.ndarray]:
    return Frames("s", 1, n, NOWHERE), np.arange(n, dtype=np.float32)


def test_an_offer_that_goes_writes_its_audio_once_and_leaves_its_slab_to_the_receiver(pool: BufferPool) -> None:
    link = MemoryLink()
    out = Outbox(pool, link.send)
    (a, x), (b, y) = frames(100), frames(50)
    sent = out.offer("model-0", [a, Forget(1), b], [(0, x), (2, y)])
    assert isinstance(sent, Went) and sent.slab is not None and pool.used_slots() == sent.slab.nslots
    (packet,) = link.packets("model-0")
    assert packet.slab == sent.slab and [type(i) for i in packet.items] == [Frames, Forget, Frames]
    data = pool.read_bytes(sent.slab)
    for item, audio in zip((packet.items[0], packet.items[2]), (x, y), strict=True):
        at = item.at  # type: ignore[union-attr]
        np.testing.assert_array_equal(np.frombuffer(data, np.float32, at.nbytes // 4, at.offset), audio)
    assert not out.held  # nothing waits: an offer is never kept
    out.release(sent.slab)  # (its receiver died: the sender takes the allocation back)
    assert pool.used_slots() == 0


def test_an_offer_without_audio_takes_no_room(pool: BufferPool) -> None:
    link = MemoryLink()
    sent = Outbox(pool, link.send).offer("model-0", [Forget(7)], [])
    assert sent == Went(None) and pool.used_slots() == 0
    assert decode(link.sent["model-0"][0]).items == [Forget(7)]


def test_an_offer_the_peer_refuses_gives_its_slab_back_and_says_so(pool: BufferPool) -> None:
    link = MemoryLink()
    link.refusing.add("model-0")
    item, x = frames(100)
    assert Outbox(pool, link.send).offer("model-0", [item], [(0, x)]) is Refused.PEER
    assert pool.used_slots() == 0 and link.sent == {}


def test_an_offer_the_pool_has_no_room_for_sends_nothing(pool: BufferPool) -> None:
    link = MemoryLink()
    out = Outbox(pool, link.send)
    hog = pool.alloc(SPEC.nslots * SPEC.slot_size)  # every slot
    assert hog is not None
    hog[1].release()
    item, x = frames(100)
    assert out.offer("model-0", [item], [(0, x)]) is Refused.POOL_FULL
    assert link.sent == {} and not out.held
    pool.release(hog[0])
    assert isinstance(out.offer("model-0", [item], [(0, x)]), Went)


def test_a_destination_with_packets_held_back_is_never_offered_one(pool: BufferPool) -> None:
    """The two ways cannot share a destination: an offer would overtake what waits."""
    link = MemoryLink()
    link.refusing.add("front-0")
    out = Outbox(pool, link.send)
    out.put("front-0", Forget(1))
    assert not out.flush()
    with pytest.raises(AssertionError):
        out.offer("front-0", [Forget(2)], [])
