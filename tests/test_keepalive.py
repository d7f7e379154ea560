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
from conversation import grpc_converse
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


@pytest.mark.long
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


UPLOAD_S, QUIET_S = 30.0, 10.0  # the case (100 s against a 60 s stop timeout), a third of the size


@pytest.fixture
def one_model_at_real_time(tmp_path: Path) -> Iterator[Server]:
    """One model actor that takes a second per second of audio; the default in-flight budget
    (60 s) lets in far more than it can answer within the stop timeout."""
    srv = Server(tmp_path / "run", env={
        "STREAMER_ACTORS_MODELS": "1", "STREAMER_MODEL_FAKE_MODE": "sleep", "STREAMER_MODEL_FAKE_DELAY": "0",
        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "1.0", "STREAMER_SERVER_STOP_TIMEOUT_S": str(QUIET_S)}).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.long
@pytest.mark.parametrize("client", ["websockets", "grpc"])
def test_a_file_uploaded_at_full_speed_to_a_busy_server_is_answered_to_the_last_sample(
        one_model_at_real_time: Server, client: str) -> None:
    """Sent as fast as the client can, then `stop`: results come all along, slowly. The stream was
    given up 1011 once the stop timeout passed since `stop`, with every result still in flight
    lost; the timeout now counts time without any result, and the front lets in only what the
    model can answer within it."""
    data = pcm_bytes(noise(UPLOAD_S)[None, :], False)
    frames = [data[i : i + 32000] for i in range(0, len(data), 32000)]
    steps = [{"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16,
                                             "is_float": False}}, *frames, {"request": "stop", "disconnect": True}]
    if client == "grpc":
        t = asyncio.run(grpc_converse(one_model_at_real_time.grpc, "simple", steps, timeout=120))
        messages, code = t.messages, t.close_code
        assert code == "OK", messages[-3:]
    else:
        async def run() -> tuple[list[dict[str, Any]], int | None]:
            got: list[dict[str, Any]] = []
            async with connect(one_model_at_real_time.ws("simple")) as ws:  # the library's defaults
                for step in steps:
                    await ws.send(step if isinstance(step, bytes) else json.dumps(step))
                async for msg in ws:
                    got.append(json.loads(msg))
                return got, ws.close_code

        messages, code = asyncio.run(run())
        assert code == 1000, messages[-3:]
    assert sum(m["count"] for m in messages if m["type"] == "segment") == int(UPLOAD_S * 16000)
    assert not [m for m in messages if m["type"] == "error"]
    held = [m for m in messages if m["type"] == "warning"]
    assert len(held) == 1 and held[0]["message"].startswith("held back")  # told, and kept its session


def test_the_front_declines_compression_so_audio_goes_as_it_is(one_slow_model: Server) -> None:
    """The `websockets` library (and browsers) offer permessage-deflate; aiohttp accepted it, so
    every frame was deflated by the client and inflated by the front: for PCM, which barely
    compresses, more CPU than the audio's own handling. Twenty 192 kHz x 8 ch clients of that
    library timed out their own handshakes on a client busy compressing."""

    async def run() -> list[str]:
        async with connect(one_slow_model.ws("simple")) as ws:
            return [str(e) for e in ws.protocol.extensions]

    assert asyncio.run(run()) == []
