"""`WebSocketWire` on a real aiohttp socket, against a raw client: what its read hold must never
do to aiohttp's own flow control, whatever the client does."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web

from streamer.front.app import ProtocolWebSocket
from streamer.front.intake import Intake
from streamer.front.session import Session
from streamer.front.wire import END, WebSocketWire

from audio import noise, pcm_bytes
from conversation import raw_frame, raw_handshake, start_msg
from frontrig import front_rig

PUSH_BYTES = 24 << 20


def deaf_pinger(port: int, pushed: list[int], done: threading.Event) -> None:
    """Audio frames among pings, and never a byte read after the handshake: the server's pongs
    fill its send path, so aiohttp's `receive()` waits on a pong's drain while its queue of
    messages grows; then as much audio as TCP lets through."""
    s = handshake(port)
    audio = raw_frame(2, b"\1" * 640)  # 20 ms of 16 kHz s16 mono
    s.settimeout(1.0)
    try:
        s.sendall((audio + raw_frame(9, b"p" * 125) * 10) * 300)
        chunk = audio * 100
        while pushed[0] < PUSH_BYTES and not done.is_set():
            try:
                s.sendall(chunk)
                pushed[0] += len(chunk)
            except TimeoutError:
                pass
    except OSError:
        pass
    finally:
        done.wait(30)
        s.close()


@pytest.mark.parametrize("hold_s", [0.0, 0.05])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_read_hold_never_undoes_aiohttps_own_pause(hold_s: float, loop: str) -> None:
    """A client that pings and streams but reads nothing: aiohttp's `receive()` waits on a pong
    while its queue fills, and aiohttp pauses the socket. A hold asked for by the audio frame
    before must not resume the socket under it, or aiohttp, believing it is still paused, reads
    everything the client sends. With or without holds, TCP holds the client back at a few MiB."""
    async def main() -> int:
        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse(autoping=True, compress=False)
            await ws.prepare(request)
            assert request.transport is not None
            request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            wire = WebSocketWire(ws, request.transport, hold_s, holding=lambda: True)
            intake = Intake(wire, 4 << 20, lambda: None)

            async def consume() -> None:
                while (await intake.next()) is not END:
                    pass

            await asyncio.gather(intake.run(), consume())
            return ws

        port, runner = await serve(handler)
        pushed, done = [0], threading.Event()
        client = threading.Thread(target=deaf_pinger, args=(port, pushed, done), daemon=True)
        client.start()
        try:
            # Until the client is held back (nothing more gets through for a second) or has sent it all.
            last, since = -1, time.monotonic()
            while pushed[0] < PUSH_BYTES and time.monotonic() - since < 1.0:
                if pushed[0] != last:
                    last, since = pushed[0], time.monotonic()
                await asyncio.sleep(0.05)
            return pushed[0]
        finally:
            done.set()
            await runner.cleanup()
            client.join(5)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop == "uvloop" else None) as runner:
        pushed = runner.run(main())
    assert pushed < 8 << 20, f"the server took {pushed >> 20} MiB from a client it could not answer"


def test_a_session_closed_for_reading_nothing_frees_its_seat_at_the_send_timeout(tmp_path: Path) -> None:
    """On a real socket, a client whose results piled up past `max_outbox` for `send_timeout_s`
    is closed then, and its session ends then: nothing more is written to a socket that has not
    taken what it was sent (the close frame would wait behind it, and the sender's last write
    too, each for another `send_timeout_s`)."""
    send_timeout_s = 2.0

    async def main() -> float:
        async with front_rig(tmp_path, limits={"send_timeout_s": send_timeout_s, "max_outbox": 4},
                             segmenter={"chunk_s": 0.02}) as rig:
            sessions: list[Session] = []
            ended = asyncio.get_running_loop().create_future()

            async def handler(request: web.Request) -> web.WebSocketResponse:
                ws = ProtocolWebSocket(rig.cfg.limits.max_frame_bytes, autoping=True, compress=False)
                await ws.prepare(request)
                assert request.transport is not None
                request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                session = Session(WebSocketWire(ws), rig.pipeline, "simple", rig.cfg)
                sessions.append(session)
                await rig.run(session)
                ended.set_result(time.monotonic())
                return ws

            port, runner = await serve(handler)
            done = threading.Event()
            client = threading.Thread(target=deaf_streamer, args=(port, done), daemon=True)
            client.start()
            try:
                async with asyncio.timeout(30):
                    while not sessions or sessions[0].outbox.qsize() <= 4:
                        await asyncio.sleep(0.01)
                    piled = time.monotonic()
                    return await ended - piled
            finally:
                done.set()
                await runner.cleanup()
                client.join(5)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        lasted = runner.run(main())
    assert send_timeout_s <= lasted < send_timeout_s + 1.0, lasted


async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[int, web.AppRunner]:
    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1], runner


def handshake(port: int) -> socket.socket:
    """A client socket with a small receive buffer, upgraded: it reads only what it chooses."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    raw_handshake(s, "127.0.0.1", port, "/ws")
    return s


def deaf_streamer(port: int, done: threading.Event) -> None:
    """A start, then live audio, and never a byte read after the handshake."""
    with handshake(port) as s:
        s.sendall(raw_frame(1, json.dumps(start_msg(1, 16000, False)).encode()))
        chunk = raw_frame(2, pcm_bytes(noise(0.1, seed=1)[None, :], False))
        s.settimeout(0.5)
        while not done.is_set():
            try:
                s.sendall(chunk)
            except TimeoutError:
                pass
            except OSError:
                break
            done.wait(0.01)
