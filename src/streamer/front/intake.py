"""Reading a client's messages ahead of the session, so pings are answered while it is held back.

aiohttp answers a client's PING only inside `receive()`. A session that stops calling it to
push back on a fast client also stops answering pings, and a client with a keepalive (the
`websockets` library pings every 20 s and gives up 20 s later) drops the connection while it
waits. So one task reads the socket as frames come and queues them, up to `limit` bytes
ahead of what the session has taken in; only past that does it stop reading, and TCP holds
the client back. The session takes the frames in order with `next()`.

What this costs is bounded: `limit` bytes per session (`[limits] read_ahead_bytes`), every
frame counted, text as well as audio, each at least `FRAME_COST` (a client flooding text
frames, or empty ones, while the session waits on it is held back as one flooding audio is).
What it buys: a client held back for minutes by a slow model still gets its pongs, and the
data ahead of a ping is at most the kernel's buffers, which the front keeps small
(`socket_receive_buffer`).

While the session waits for the next message with nothing queued, an audio frame is offered to it
at once (`take`), in the reading task: a live client's frame then costs one task's turn, not
two (this task's, then the session's after a wake-up). The session takes it only when it could
feed it without waiting (its stream running, within every budget); otherwise the frame is queued
as any other and the session meets it in `next()`, so the order of the client's messages and
every limit are those of the queued path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from streamer.front.wire import END, Incoming, Wire

FRAME_COST = 256  # bytes a queued frame costs whatever it holds: the message object and its place in the queue


def cost(msg: Incoming) -> int:
    return max(len(msg.data), FRAME_COST)


class Intake:
    def __init__(self, wire: Wire, limit: int, on_frame: Callable[[], None],
                 take: Callable[[bytes], bool] = lambda _: False) -> None:
        self._wire = wire
        self._limit = limit
        self._on_frame = on_frame  # the client sent something (not idle)
        self._take = take  # the session feeds an audio frame now, or says no (then it is queued)
        self._parked = False  # the session waits in `next()` on an empty queue
        self._frames: deque[Incoming] = deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._arrived = asyncio.Event()
        self.received = 0  # bytes of binary frames read from the client, as they come

    async def run(self) -> None:
        """Read until the client has gone (the `end` is the last message queued)."""
        while True:
            await self._room.wait()
            msg = await self._wire.receive()
            # Parked on an empty queue: a message queued since (a `stop` read with this frame, the
            # session not yet woken for it) would be overtaken, so only while nothing is queued.
            if msg.kind == "binary" and self.waiting and isinstance(msg.data, bytes) \
                    and self._take(msg.data):
                self.received += len(msg.data)
                continue  # fed: the session stays parked, nothing queued
            self._frames.append(msg)
            self._arrived.set()
            if msg.kind == "end":
                return
            self._on_frame()
            if msg.kind == "binary":
                self.received += len(msg.data)
            self._bytes += cost(msg)
            if self._bytes >= self._limit:
                self._room.clear()

    @property
    def waiting(self) -> bool:
        """The session waits for the client with nothing queued: a binary frame read now is
        offered to it at once."""
        return self._parked and not self._frames

    def end(self) -> None:
        """No more reading (the session is closing): whoever waits in `next` gets the end."""
        self._frames.append(END)
        self._arrived.set()

    async def next(self) -> Incoming:
        """The client's next message, in order."""
        while not self._frames:
            self._arrived.clear()
            self._parked = True
            try:
                await self._arrived.wait()
            finally:
                self._parked = False
        msg = self._frames.popleft()
        if msg.kind != "end":
            self._taken(msg)
        return msg

    def audio_ready(self, limit: int) -> list[bytes]:
        """The binary frames queued right now, in order, up to the first other message and to
        `limit` bytes in all: what a session can feed at once with the frame it has just taken."""
        out: list[bytes] = []
        while self._frames and self._frames[0].kind == "binary" and len(self._frames[0].data) <= limit:
            msg = self._frames.popleft()
            self._taken(msg)
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            out.append(data)
            limit -= len(data)
        return out

    def _taken(self, msg: Incoming) -> None:
        self._bytes -= cost(msg)
        if self._bytes < self._limit:
            self._room.set()
