"""How the front ends a WebSocket (`ProtocolWebSocket` in front/app.py), against the aiohttp
that is installed: the one private hook it overrides must still be the one aiohttp calls.

aiohttp closes the socket as soon as the close handshake is over or given up; the front closes
it `LINGER_S` later, so a client's unread frames do not turn the close into a reset that
discards the error and close frame it was sent. If an aiohttp release renames or stops
calling `_close_transport`, the first test here fails instead of clients silently losing why
they were closed."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamer.front import protocol
from streamer.front.app import LINGER_S, ProtocolWebSocket


async def serve_one(handler_result: dict[str, object], code: int, frame_limit: int = 64) -> list[aiohttp.WSMessage]:
    """One server-side ProtocolWebSocket that reads one message and closes with `code`; what a
    client received, and whether the server's transport was already closing right after close()."""

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        ws = ProtocolWebSocket(frame_limit)
        await ws.prepare(request)
        handler_result["transport"] = transport
        await ws.receive()
        await ws.close(code=code)
        handler_result["closing_at_once"] = transport.is_closing()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as client, client.ws_connect(server.make_url("/ws")) as ws:
            await ws.send_str("x" * (frame_limit + 1) if code == protocol.TOO_BIG else "hello")
            received = [msg async for msg in ws]
            received.append(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, ws.close_code, None))
        transport = handler_result["transport"]
        assert isinstance(transport, asyncio.BaseTransport)
        for _ in range(int(20 * LINGER_S / 0.01)):  # polls for the condition, with a deadline
            if transport.is_closing():
                break
            await asyncio.sleep(0.01)
        handler_result["closing_later"] = transport.is_closing()
        return received
    finally:
        await server.close()


def test_the_socket_is_closed_a_moment_after_the_close_handshake_not_at_once() -> None:
    seen: dict[str, object] = {}
    asyncio.run(serve_one(seen, 1000))
    assert seen["closing_at_once"] is False, "aiohttp closed the socket itself: the override no longer runs"
    assert seen["closing_later"] is True, "the lingering close never came"


def test_a_frame_over_the_limit_is_told_why_before_1009() -> None:
    seen: dict[str, object] = {}
    received = asyncio.run(serve_one(seen, protocol.TOO_BIG))
    texts = [m.data for m in received if m.type == aiohttp.WSMsgType.TEXT]
    assert any("size limit of 64 bytes" in t for t in texts), received
    assert received[-1].data == protocol.TOO_BIG
