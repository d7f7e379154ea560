"""Clients that upload files as fast as they can, in every format the limits allow: the load a
busy batch user puts on a streaming server. Shared by `tests/test_uploads.py` (small) and
`bench/uploads.py` (the full size, with figures).

Each client streams noise (every sample counted on the simple route) with aiohttp's client or
the `websockets` library, at full speed, then `stop` with disconnect, and reports what came
back: the close code, every channel's count of 16 kHz samples against what it sent, errors.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import websockets

from audio import model_samples


@dataclass(frozen=True)
class Upload:
    """One client: its format, how much it sends, in frames of how many bytes, with which library."""

    channels: int = 1
    rate: int = 16000
    is_float: bool = False
    seconds: float = 60.0
    frame_bytes: int = 3200  # 100 ms of 16 kHz s16 mono: what streamer-client sends by default
    library: str = "aiohttp"  # or "websockets"

    @property
    def name(self) -> str:
        kind = "f32" if self.is_float else "s16"
        return f"{self.channels}ch {self.rate // 1000}k {kind}"

    def pcm(self, seed: int) -> bytes:
        frames = int(self.seconds * self.rate)
        x = np.random.default_rng(seed).uniform(-0.3, 0.3, (frames, self.channels)).astype(np.float32)
        return x.astype("<f4").tobytes() if self.is_float else (x * 32767).astype("<i2").tobytes()

    def start(self) -> dict[str, Any]:
        return {"request": "start", "format": {"channels": self.channels, "sample_rate": self.rate,
                                               "bit_depth": 32 if self.is_float else 16, "is_float": self.is_float}}


@dataclass
class Outcome:
    upload: Upload
    close_code: int | None = None
    counts: list[int] = field(default_factory=list)  # 16 kHz samples answered per channel
    expected: int = 0  # per channel
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: str = ""  # an exception the client met
    refused: int = 0  # handshakes answered 503 (at capacity) before it got in

    @property
    def whole(self) -> bool:
        """Closed 1000, no error, every sample of every channel counted."""
        return (self.close_code == 1000 and not self.errors and not self.failure
                and self.counts == [self.expected] * self.upload.channels)


async def upload(url: str, up: Upload, data: bytes, timeout: float = 600.0) -> Outcome:
    """One client sends `data` (made by `up.pcm`, before any client starts: making it inside the
    clients' event loop held every other client's handshake back)."""
    out = Outcome(up, expected=model_samples(int(up.seconds * up.rate), up.rate), counts=[0] * up.channels)
    step = up.frame_bytes - up.frame_bytes % (up.channels * (4 if up.is_float else 2))
    frames = [data[i : i + step] for i in range(0, len(data), step)]
    began = time.monotonic()

    def take(msg: dict[str, Any]) -> None:
        if msg["type"] == "segment":
            out.counts[msg["channel"]] += msg["count"]
        elif msg["type"] == "error":
            out.errors.append(msg["message"])

    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    if up.library == "websockets":
                        await _with_websockets(url, up, frames, take, out)
                    else:
                        await _with_aiohttp(url, up, frames, take, out)
                    break
                except (aiohttp.WSServerHandshakeError, websockets.InvalidStatus) as e:
                    if _status(e) != 503:
                        raise
                    out.refused += 1  # the server is at capacity: come back, as streamer-client does
                    await asyncio.sleep(1.0)  # pacing: a client's back-off after a 503
    except Exception as e:  # reported, not raised: one client's failure is a figure
        out.failure = repr(e)
    out.seconds = time.monotonic() - began
    return out


def _status(e: Exception) -> int:
    if isinstance(e, aiohttp.WSServerHandshakeError):
        return e.status
    return int(e.response.status_code) if isinstance(e, websockets.InvalidStatus) else 0


async def _with_aiohttp(url: str, up: Upload, frames: list[bytes], take: Any, out: Outcome) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        async def read() -> None:
            async for m in ws:
                if m.type == aiohttp.WSMsgType.TEXT:
                    take(json.loads(m.data))

        reader = asyncio.create_task(read())
        await ws.send_json(up.start())
        for frame in frames:
            await ws.send_bytes(frame)
        await ws.send_json({"request": "stop", "disconnect": True})
        await reader
        out.close_code = ws.close_code


async def _with_websockets(url: str, up: Upload, frames: list[bytes], take: Any, out: Outcome) -> None:
    async with websockets.connect(url, max_size=None) as ws:  # its default keepalive: ping 20 s, timeout 20 s
        async def read() -> None:
            async for m in ws:
                take(json.loads(m))

        reader = asyncio.create_task(read())
        await ws.send(json.dumps(up.start()))
        for frame in frames:
            await ws.send(frame)
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        try:
            await reader
        except websockets.ConnectionClosed:
            pass
        out.close_code = ws.close_code


async def all_at_once(url: str, uploads: list[Upload], timeout: float = 600.0) -> list[Outcome]:
    """Every client at once, in this process; clients of one format send the same noise."""
    pcm = {up: up.pcm(seed) for seed, up in enumerate(dict.fromkeys(uploads))}
    return list(await asyncio.gather(*(upload(url, up, pcm[up], timeout) for up in uploads)))


def _run(url: str, uploads: list[Upload], timeout: float) -> list[Outcome]:
    return asyncio.run(all_at_once(url, uploads, timeout))


def in_processes(url: str, uploads: list[Upload], processes: int, timeout: float = 600.0) -> list[Outcome]:
    """Every client at once, spread over `processes` processes: one Python process sending
    hundreds of MiB for twenty clients is itself the bottleneck (its event loop, busy framing
    and masking, let the `websockets` clients' 10 s handshake timeout pass)."""
    shares = [uploads[k::processes] for k in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        done = list(pool.map(_run, [url] * processes, shares, [timeout] * processes))
    return [o for share in done for o in share]
