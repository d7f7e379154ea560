"""What a session talks through: a WebSocket, or a gRPC call (`front/grpc_api.py`).

A `Session` reads the client's messages in order (`receive`: a text request, a binary audio
frame, or the end), writes JSON objects back (`send`) and ends with a PROTOCOL.md close code
(`close`); how each transport carries those is its own business. So the protocol's rules,
limits and backpressure are written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import WSMsgType, web

from streamer.front.front_metrics import READ_HOLDS


@dataclass(frozen=True)
class Incoming:
    kind: Literal["text", "binary", "end"]
    data: str | bytes = b""


END = Incoming("end")


class Wire(Protocol):
    async def receive(self) -> Incoming:
        """The client's next message; `end` once it has gone (or closed)."""
        ...

    async def send(self, item: dict[str, Any]) -> None: ...

    async def close(self, code: int, reason: str) -> None:
        """End the session with a close code (PROTOCOL.md's) and a short reason."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def gathering(self) -> bool:
        """Frames come in groups on purpose (a read hold): the session should take what is queued
        together rather than each frame as it comes."""
        ...


class WebSocketWire:
    """`hold_s` > 0: after a binary frame the socket is not read for that long, so the frames a
    client sends meanwhile wait in the kernel and arrive together, in one read (one wake-up of the
    loop, one parse, one message to the decoder for all of them: `Session` joins what is queued).
    A client at 20 ms frames costs a read per frame otherwise, which is most of what a front
    spends on it. What it costs: up to `hold_s` more latency on every frame, and as late an
    answer to a ping; so it applies only while `holding()` says the front is busy enough for
    the CPU to matter more (`[front] read_hold_sessions`), and only to a client streaming live
    at a rate the socket's receive buffer carries across a hold (`Session.holdable`)."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None,
                 hold_s: float = 0.0, holding: Callable[[], bool] = lambda: True) -> None:
        self.ws = ws
        self._transport = transport if hold_s > 0 else None
        self._hold_s = hold_s
        self._holding = holding
        self._held: asyncio.TimerHandle | None = None
        self._asked = False  # a `_hold` is scheduled
        self._waiting = False  # the reader waits inside `ws.receive()`

    async def receive(self) -> Incoming:
        self._waiting = True
        try:
            msg = await self.ws.receive()
        finally:
            self._waiting = False
        if msg.type is WSMsgType.TEXT:
            return Incoming("text", msg.data)
        if msg.type is WSMsgType.BINARY:
            if self._transport is not None and self._held is None and not self._asked and self._holding():
                self._asked = True
                asyncio.get_running_loop().call_soon(self._hold)
            return Incoming("binary", msg.data)
        return END  # CLOSE, CLOSING, CLOSED, ERROR (a frame over the limit: already closed 1009)

    def _hold(self) -> None:
        """Pause the socket, if the reader has taken everything aiohttp had parsed. aiohttp pauses
        the same socket when its own queue of messages is too long, and a resume of ours would
        undo that (its queue would then grow without bound), so the hold starts only where
        aiohttp cannot be holding it: with the reader waiting inside `ws.receive()`, which waits
        only on an empty queue. (The reader takes a queued message without waiting, so by the
        time this runs it has taken them all, or it has stopped for its read-ahead limit.)
        But `receive()` also waits inside, on the drain of a pong to a client that reads
        nothing, while its queue fills and aiohttp pauses the socket: a socket already paused
        is never held (`test_wire.py`). While the hold lasts nothing is read, so aiohttp's
        queue cannot fill and pause it meanwhile."""
        self._asked = False
        t = self._transport
        if t is None or not self._waiting or self._held is not None or t.is_closing() or not t.is_reading():
            return
        t.pause_reading()
        READ_HOLDS.inc()
        self._held = asyncio.get_running_loop().call_later(self._hold_s, self._resume)

    def _resume(self) -> None:
        self._held = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    async def send(self, item: dict[str, Any]) -> None:
        await self.ws.send_json(item)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    @property
    def closed(self) -> bool:
        return self.ws.closed

    @property
    def gathering(self) -> bool:
        return self._transport is not None and self._holding()
