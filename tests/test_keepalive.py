"""Clients this project did not write, with their own defaults: the `websockets` library pings
every 20 s and drops the connection when a pong takes 20 s. A front that stops reading a fast
client to hold it back must still answer those pings (front/intake.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from audio import noise, pcm_bytes
from server import Server

SECONDS = 50.0  # of audio, sent at once; the model works through it at real time


@pytest.fixture
def one_slow_model(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "run", env={
        "STREAMER_ACTORS_MODELS": "1", "STREAMER_MODEL_FAKE_MODE": "sleep", "STREAMER_MODEL_FAKE_DELAY": "0",
        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "1.0", "STREAMER_LIMITS_MAX_INFLIGHT_AUDIO_S": "5"}).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_held_back_client_with_default_keepalive_keeps_its_connection(one_slow_model: Server) -> None:
    data = pcm_bytes(noise(SECONDS)[None, :], False)

    async def run() -> tuple[list[dict[str, Any]], int | None]:
        got: list[dict[str, Any]] = []
        async with connect(one_slow_model.ws("simple")) as ws:  # the library's defaults throughout
            await ws.send(json.dumps({"request": "start", "format": {
                "channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False}}))
            for i in range(0, len(data), 3200):
                await ws.send(data[i : i + 3200])
            await ws.send(json.dumps({"request": "stop", "disconnect": True}))
            async for msg in ws:
                got.append(json.loads(msg))
            return got, ws.close_code

    messages, code = asyncio.run(run())
    assert code == 1000, messages[-3:]
    assert sum(m["count"] for m in messages if m["type"] == "segment") == int(SECONDS * 16000)
    held = [m for m in messages if m["type"] == "warning"]
    assert len(held) == 1 and held[0]["message"].startswith("held back for 3 s")
