"""One actor in the test's own process: a `MemoryLink`, a `FakeClock` and the run's real pools.

Pipecat-style: a test states what goes into the actor's inboxes (`put`, with audio written
into the sending role's real shared-memory pool, as that peer would), turns the actor, and
reads what it sent to each destination (`sent`), as typed items. No sockets, no processes,
no real time: a 10 s window is a clock move.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.actors.actor import Actor, Env
from streamer.runtime import config
from streamer.runtime.clock import FakeClock
from streamer.runtime.topology import Place, Topology
from streamer.transport.link import MemoryLink
from streamer.transport.messages import Message, Packet, Slice
from streamer.transport.outbox import pack
from streamer.transport.shm import BufferPool, Payload

SMALL_POOLS = {"front_slot_bytes": 4096, "front_slots": 256, "decoder_slot_bytes": 4096, "decoder_slots": 256,
               "segmenter_slot_bytes": 16384, "segmenter_slots": 256}


class Rig:
    def __init__(self, cls: type[Actor], place: Place, fronts: int = 1, models: int = 2,
                 **overrides: dict[str, Any]) -> None:
        # "split", whatever the defaults say: the rig's fronts share one decoder and one segmenter
        # (under "shards" each front is a shard of its own). A test may ask for another in `overrides`.
        tree: dict[str, Any] = {"actors": {"fronts": fronts, "models": models, "placement": "split"},
                                "pools": dict(SMALL_POOLS)}
        for section, values in overrides.items():
            tree.setdefault(section, {}).update(values)
        self.cfg = config.load(env={}, overrides=tree)
        self.topology = Topology(self.cfg)
        self.run_id = secrets.token_hex(4)
        self.pools = {name: BufferPool.create(spec, self.run_id) for name, spec in self.topology.pools.items()}
        self.link = MemoryLink()
        self.clock = FakeClock()
        self.place = place
        try:
            self.actor = cls(Env(place, self.cfg, self.link, self.pools, self.clock))
        except BaseException:  # the fixture never yields: nothing else would unlink the pools
            for pool in self.pools.values():
                pool.close()
                pool.unlink()
            raise

    def put(self, inbox: str, *items: Message, audio: list[Payload | None] | None = None,
            pool: str | None = None) -> None:
        """One packet into `inbox`. `audio[i]` (None for an item without audio) is the payload of
        `items[i]`, written into `pool` (the pool of the role that would have sent it) with the
        item's `at` filled in."""
        payloads = [(i, a) for i, a in enumerate(audio or []) if a is not None]
        assert pool is not None or not payloads, "audio travels in a pool: name the sender's"
        packed = pack(self.pools[pool] if pool is not None else None, list(items), payloads)
        assert packed is not None, "the test pool is full"
        self.link.inboxes[inbox].append(packed[0])

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.actor.turn(0)

    def packets(self, dest: str) -> list[Packet]:
        return self.link.packets(dest)

    def sent(self, dest: str, kind: type | None = None) -> list[Any]:
        """Items the actor sent to `dest` since the last look (only those of `kind`, if given)."""
        items = self.link.items(dest)
        return [i for i in items if kind is None or isinstance(i, kind)]

    def read(self, packet: Packet, at: Slice, dtype: type[np.generic] = np.float32) -> npt.NDArray[Any]:
        """The audio an item of `packet` carries (the slab stays taken: the receiver releases it)."""
        assert packet.slab is not None
        data = self.pools[packet.slab.pool].read_bytes(packet.slab)
        return np.frombuffer(data, dtype, at.nbytes // np.dtype(dtype).itemsize, at.offset)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
            pool.unlink()
