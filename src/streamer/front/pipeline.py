"""The front's side of the pipeline: client audio out to the decoder, everything else back in.

Out. Every session hands its stream's frames and control to `send`; the pipeline gathers what
all sessions give it for at most `[front] coalesce_ms` and sends the decoder one packet: one
allocation in this front's pool holding every frame's bytes, and the items in the order the
sessions gave them (a burst, such as a replay of a minute of audio, becomes several packets:
`transport/outbox.py`). When the pool is full, or the decoder's inbox is, the packets wait
and `room` is cleared: sessions stop reading their sockets until it is set again, so TCP
holds the clients back. Nothing is dropped.

In. The inbox's ZeroMQ file descriptor is watched by the event loop; on each wake-up every
waiting packet is read and each item handed to the session that owns its stream (`routes`).
An item of a stream that has ended is dropped; `Exited` and `Load` concern the whole front.

In a shard's process (`placement = "shards"`) the decoder and the segmenter are actors of this
process, turned by the same event loop (`actors.host.InLoop`): packets for the decoder are
handed over in memory (the client's bytes as they came, no pool) and the actors are kicked; what
they hand this front comes back the same way (`receive_local`, after each of their turns). The
inbox socket stays: other shards' segmenters and the supervisor still write to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

from streamer.runtime.process import ChildContext
from streamer.runtime.topology import Place, Topology, front_inbox
from streamer.transport import sockets
from streamer.transport.link import Local
from streamer.transport.messages import Exited, Load, Message, decode, stream_of
from streamer.transport.outbox import Outbox
from streamer.transport.shm import BufferPool

log = logging.getLogger("front.pipeline")

MAX_PACKET_BYTES = 1 << 20  # audio this large goes at once, whatever the window
RETRY_S = 0.002  # while the pool or the decoder is full


class Pipeline:
    def __init__(self, ctx: ChildContext, coalesce_s: float, local: Local | None = None,
                 kick: Callable[[], None] = lambda: None) -> None:
        topo = Topology(ctx.cfg())
        self.index = ctx.index
        self.shard = topo.shard_of(ctx.index)  # whose decoder and segmenter carry this front's sessions
        self.decoder = Place("decoder", self.shard).name
        self._coalesce_s = coalesce_s
        self._zctx: zmq.Context[sockets.Socket] = zmq.Context()
        self._in = self._zctx.socket(zmq.PULL)
        sockets.bind_inbox(self._in, ctx.run_dir, front_inbox(ctx.index))
        self._pool = BufferPool.attach(topo.pools[front_inbox(ctx.index)], ctx.run_id)
        self._pool.reclaim()  # whatever a previous front wrote belongs to sessions that are gone
        self._local = local if local is not None and self.decoder in local else None
        self._kick = kick
        if self._local is not None:  # the decoder is an actor of this process
            self._outbox = Outbox(self._pool, lambda _, __: False, hand=self._local.put, local=[self.decoder])
        else:
            self._out = sockets.outbox(self._zctx, ctx.run_dir, self.decoder)
            self._outbox = Outbox(self._pool, lambda _, data: sockets.try_send(self._out, data))
        self._flush_at: asyncio.TimerHandle | asyncio.Handle | None = None
        self.room = asyncio.Event()
        self.room.set()
        self.routes: dict[str, Callable[[Message], None]] = {}
        self.on_exited: Callable[[Exited], None] = lambda _: None
        self.on_load: Callable[[Load], None] = lambda _: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sockets.fd(self._in), self._receive)
        self._loop.call_soon(self._receive)

    async def close(self) -> None:
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(sockets.fd(self._in))
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._zctx.destroy(linger=sockets.LINGER_MS)
        self._pool.close()

    # -- out ----------------------------------------------------------------------------------

    def send(self, msg: Message, payload: bytes | None = None) -> None:
        """Queue an item (with its bytes, for `Pcm`) for the next packet to the decoder."""
        if self.closed:
            return  # shutting down: a handler cancelled late has nobody left to tell
        self._outbox.put(self.decoder, msg, payload)
        if self._outbox.pending_bytes >= MAX_PACKET_BYTES:
            self.room.clear()
            self._schedule(0.0)
        elif self._flush_at is None:
            self._schedule(self._coalesce_s)

    def _schedule(self, delay: float) -> None:
        assert self._loop is not None
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._flush_at = self._loop.call_later(delay, self.flush) if delay > 0 else self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_at = None
        handed = self._local.handed if self._local is not None else 0
        went = self._outbox.flush()
        if self._local is not None and self._local.handed > handed:
            self._kick()  # the decoder takes what was handed to it in its next turn, soon
        if went:
            self.room.set()
        else:  # the pool or the decoder is full: sessions stop reading their clients until it goes
            self.room.clear()
            if self._local is None:
                self._schedule(RETRY_S)
            # (An in-process decoder makes room in one of its turns, after which `receive_local`
            # tries again: no timer.)

    # -- in -----------------------------------------------------------------------------------

    def _receive(self) -> None:
        raws = sockets.drain(self._in, 256)
        for raw in raws:
            for item in decode(raw).items:
                self._route(item)
        if len(raws) == 256 and self._loop is not None:
            self._loop.call_soon(self._receive)  # more waiting: the fd will not fire again for them

    def receive_local(self) -> None:
        """What this process's decoder and segmenter handed this front in their last turn; and
        what waited for room in the decoder's inbox, which that turn may have made."""
        if self._local is None:
            return
        for packet in self._local.take(front_inbox(self.index), 1 << 30):
            for item in packet.items:
                self._route(item)
        if self._outbox.held and self._flush_at is None:
            self.flush()

    def _route(self, item: Message) -> None:
        if isinstance(item, Load):
            self.on_load(item)
        elif isinstance(item, Exited):
            self.on_exited(item)
        else:
            handler = self.routes.get(stream_of(item) or "")
            if handler is not None:
                handler(item)
