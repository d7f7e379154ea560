"""`streamer-client`'s reconnects, against a stand-in server in the test's process that drops
connections (1006, as a front's death does) when the test says: how long the client waits, and
from where it resumes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from streamer.client import streamer_client
from streamer.client.streamer_client import Pcm, stream

RATE = 16000
PCM = Pcm(b"\x00\x00" * RATE * 10, 1, RATE, False)  # 10 s of silence


def final(start: float, end: float) -> dict[str, Any]:
    return {"type": "segment", "channel": 0, "start_time": start, "end_time": end, "is_final": True}


async def talk_to(drops: list[bool | None]) -> tuple[streamer_client.Report, list[int]]:
    """Serve one stream over `len(drops) + 1` connections: connection k answers one final for the
    first audio it is sent, then drops (abort: 1006) if `drops[k]` is True; it drops at once
    without one if False, and in the middle of the handshake if None; the last one answers its
    stop and closes 1000. Returns the client's report and the back-off it chose after each drop
    (how many fruitless connections in a row it counted)."""
    connections = 0
    waits: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        k, connections = connections, connections + 1
        if k < len(drops) and drops[k] is None:
            assert request.transport is not None
            request.transport.abort()  # the front died before the WebSocket was up
            return web.Response()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        start = await ws.receive_json()
        assert start["request"] == "start"
        first = await ws.receive()
        if k < len(drops):
            if drops[k]:
                await ws.send_json(final(0.0, 1.0))
            assert request.transport is not None
            request.transport.abort()
            return ws
        assert first.type is aiohttp.WSMsgType.BINARY
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and '"stop"' in msg.data:
                await ws.send_json(final(0.0, 1.0))
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    server = TestServer(app)
    await server.start_server()
    original: Callable[[int], float] = streamer_client.backoff_s

    def spied(fruitless: int) -> float:
        waits.append(fruitless)
        return original(fruitless) / 20  # the same choice, twenty times faster

    try:
        streamer_client.backoff_s = spied  # type: ignore[assignment]
        report = await stream(str(server.make_url("/ws")), PCM, reconnects=len(drops))
    finally:
        streamer_client.backoff_s = original  # type: ignore[assignment]
        await server.close()
    return report, waits


@pytest.mark.parametrize(("drops", "waits"), [
    ([True, True, True, True], [0, 0, 0, 0]),  # each connection brought a final: the short wait every time
    ([False, False, False], [1, 2, 3]),  # nothing came back: the wait doubles
    ([False, False, True, False], [1, 2, 0, 1]),  # progress resets it
    # A front that dies mid-handshake is a lost connection too, not the client's end (aiohttp tries
    # a handshake twice by itself: the second one's failure reaches the client).
    ([None, None, True], [1, 0]),
])
def test_the_client_backs_off_only_while_connections_bring_nothing(drops: list[bool | None],
                                                                   waits: list[int]) -> None:
    """After a front's death, the next front takes the stream at once: a client that waited longer
    after each death (up to 2 s) fell behind a stream whose fronts kept dying, never reaching its
    next final before the next death."""
    report, chose = asyncio.run(talk_to(drops))
    assert report.close_code == 1000 and report.reconnects == len(waits)
    assert chose == waits
