"""Reading a client's frames ahead of the session, so pings are answered while it is held back.

aiohttp answers a client's PING only inside `receive()`. A session that stops calling it to
push back on a fast client also stops answering pings, and a client with a keepalive (the
`websockets` library pings every 20 s and gives up 20 s later) drops the connection while it
waits. So one task reads the socket as frames come and queues them, up to `limit` bytes of
audio ahead of what the session has taken in; only past that does it stop reading, and TCP
holds the client back. The session takes the frames in order with `next()`.

What this costs is bounded: `limit` bytes per session (`[limits] read_ahead_bytes`). What it
buys: a client held back for minutes by a slow model still gets its pongs, and the data
ahead of a ping is at most the kernel's buffers, which the front keeps small
(`socket_receive_buffer`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from aiohttp import WSMessage, WSMsgType, web

_DATA = (WSMsgType.BINARY, WSMsgType.TEXT)


class Intake:
    def __init__(self, ws: web.WebSocketResponse, limit: int, on_frame: Callable[[], None]) -> None:
        self._ws = ws
        self._limit = limit
        self._on_frame = on_frame  # the client sent something (not idle)
        self._frames: deque[WSMessage] = deque()
        self._bytes = 0
        self._room = asyncio.Event()
        self._room.set()
        self._arrived = asyncio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    async def run(self) -> None:
        """Read until the socket closes (a CLOSE, CLOSING, CLOSED or ERROR message is the last one queued)."""
        while True:
            await self._room.wait()
            msg = await self._ws.receive()
            self._frames.append(msg)
            self._arrived.set()
            if msg.type not in _DATA:
                return
            self._on_frame()
            if msg.type is WSMsgType.BINARY:
                self._bytes += len(msg.data)
                if self._bytes >= self._limit:
                    self._room.clear()

    async def next(self) -> WSMessage:
        """The client's next frame, in order."""
        while not self._frames:
            self._arrived.clear()
            await self._arrived.wait()
        msg = self._frames.popleft()
        if msg.type is WSMsgType.BINARY:
            self._bytes -= len(msg.data)
            if self._bytes < self._limit:
                self._room.set()
        return msg
