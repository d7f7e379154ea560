"""What a session talks through: a WebSocket, or a gRPC call (`front/grpc_api.py`).

A `Session` reads the client's messages in order (`receive`: a text request, a binary audio
frame, or the end), writes JSON objects back (`send`) and ends with a PROTOCOL.md close code
(`close`); how each transport carries those is its own business. So the protocol's rules,
limits and backpressure are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aiohttp import WSMsgType, web


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


class WebSocketWire:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> Incoming:
        msg = await self.ws.receive()
        if msg.type is WSMsgType.TEXT:
            return Incoming("text", msg.data)
        if msg.type is WSMsgType.BINARY:
            return Incoming("binary", msg.data)
        return END  # CLOSE, CLOSING, CLOSED, ERROR (a frame over the limit: already closed 1009)

    async def send(self, item: dict[str, Any]) -> None:
        await self.ws.send_json(item)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode()[:120])

    @property
    def closed(self) -> bool:
        return self.ws.closed
