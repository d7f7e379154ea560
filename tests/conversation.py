"""Talking to a running server as a client does, and checking what came back against
docs/protocol.md's ordering rules (stated once here, used by every end-to-end test)."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import math
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from audio import pcm_bytes


@dataclass
class Transcript:
    messages: list[dict[str, Any]]
    close_code: int | str | None  # a WebSocket close code, or a gRPC status name

    def channel(self, ch: int) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("channel") == ch]

    def of_type(self, kind: str, ch: int | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind and (ch is None or m["channel"] == ch)]

    def finals(self, ch: int) -> list[dict[str, Any]]:
        return [m for m in self.of_type("segment", ch) if m.get("is_final")]


def client_transcript(stdout: str) -> Transcript:
    """What `streamer-client` printed (one `<seconds>s <json>` line per message), as a transcript
    that closed normally (the client exits non-zero otherwise)."""
    messages = []
    for line in stdout.splitlines():
        head, _, rest = line.strip().partition(" ")
        if head.endswith("s") and rest.startswith("{"):
            messages.append(json.loads(rest))
    return Transcript(messages, 1000)


def idle_warning(m: dict[str, Any]) -> bool:
    """The server's warning after half its idle timeout without audio. Tests on a server with a
    short one (2 s) set it aside: a loaded machine can pause a front that long mid-stream, and the
    warning is then true but beside the point of the test."""
    return m["type"] == "warning" and str(m.get("message", "")).startswith("no audio for")


def start_msg(channels: int, rate: int, is_float: bool, interim: bool = False) -> dict[str, Any]:
    return {"request": "start", "interim_results": interim,
            "format": {"channels": channels, "sample_rate": rate, "bit_depth": 32 if is_float else 16,
                       "is_float": is_float}}


def audio_frames(audio: npt.NDArray[np.float32], is_float: bool, chunk_s: float = 0.1,
                 rate: int = 16000) -> list[bytes]:
    """(channels x frames) audio as binary frames of `chunk_s` each."""
    data = pcm_bytes(audio, is_float)
    step = max(1, int(chunk_s * rate)) * audio.shape[0] * (4 if is_float else 2)
    return [data[i : i + step] for i in range(0, len(data), step)]


# What a test does at a point of a stream: called with the messages read so far; if it returns an
# awaitable, the sending waits for it (the reading goes on).
Action = Callable[[list[dict[str, Any]]], object]
Step = dict[str, Any] | bytes | str | Action


def at_audio(steps: Sequence[Step], seconds: float, action: Action, chunk_s: float = 0.1) -> list[Step]:
    """`stream_steps` with `action` once the client has sent the first `seconds` of its audio."""
    k = 1 + math.ceil(round(seconds / chunk_s, 6))  # after the start and the frames that hold it
    assert 1 < k < len(steps) and all(isinstance(s, bytes) for s in steps[1:k]), (seconds, len(steps))
    return [*steps[:k], action, *steps[k:]]


async def until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Wait in the event loop (a client's reading goes on) until `predicate()` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)  # polling: the condition is the wait


async def converse(url: str, steps: Sequence[Step], timeout: float = 60.0,
                   pace_s: float = 0.0, **connect: Any) -> Transcript:
    """Send every step (JSON objects as text, bytes as binary, str verbatim, an `Action` run)
    and read until close; `pace_s` waits between binary frames (a client streaming live rather
    than a file). A send into a socket the server has closed ends the sending: hostile inputs
    get cut off mid-way."""
    messages: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0, **connect) as ws:

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    messages.append(json.loads(msg.data))

        reader = asyncio.create_task(read())
        for step in steps:
            if ws.closed:
                break
            if callable(step):
                done = step(messages)
                if inspect.isawaitable(done):
                    await done
                continue
            try:
                if isinstance(step, bytes):
                    await ws.send_bytes(step)
                    if pace_s:
                        await asyncio.sleep(pace_s)  # pacing: a client sending as it records
                elif isinstance(step, str):
                    await ws.send_str(step)
                else:
                    await ws.send_json(step)
            except (ConnectionError, aiohttp.ClientError):
                break
        await asyncio.wait_for(reader, timeout)
        return Transcript(messages, ws.close_code)


def stream_steps(audio: npt.NDArray[np.float32], rate: int, is_float: bool, interim: bool = False,
                 disconnect: bool = True) -> list[dict[str, Any] | bytes | str]:
    return [start_msg(audio.shape[0], rate, is_float, interim),
            *audio_frames(audio, is_float, rate=rate),
            {"request": "stop", "disconnect": disconnect}]


def check_segmented_order(t: Transcript, ch: int, close_code: int | str = 1000) -> None:
    """An undisturbed stream: every region answered by its final (no error of any kind), each
    region's interims before its final and within it, results in audio order."""
    _, errors = check_regions_answered(t, ch, close_code=close_code)
    assert errors == 0 and not t.of_type("error"), t.of_type("error")
    open_at: float | None = None
    last_start = -1.0
    for m in t.channel(ch):
        if m["type"] == "active":
            open_at = m["time"]
        elif m["type"] == "inactive":
            open_at = None
        elif m["type"] == "segment" and not m["is_final"]:
            assert open_at is not None and m["start_time"] == open_at, f"an interim outside its region: {m}"
            assert m["end_time"] > m["start_time"], m
        if m["type"] == "segment":
            assert m["start_time"] >= last_start, f"results out of audio order at {m}"
            last_start = m["start_time"]


def check_simple_counts(t: Transcript, ch: int, samples_16k: int, chunk_s: float = 0.5) -> None:
    """One result per chunk, in order, contiguous, counts adding up to every 16 kHz sample."""
    segs = t.of_type("segment", ch)
    assert all("is_final" not in s for s in segs)
    assert sum(s["count"] for s in segs) == samples_16k
    starts = [s["start_time"] for s in segs]
    assert starts == [round(i * chunk_s, 4) for i in range(len(segs))]


def is_region_answer(m: dict[str, Any]) -> bool:
    """A final segment, or an error naming a region (not an interim one)."""
    return (m["type"] == "segment" and m.get("is_final") is True) or \
        (m["type"] == "error" and "start_time" in m and m.get("is_final") is not False)


def check_regions_answered(t: Transcript, ch: int, *, close_code: int | str = 1000,
                           stage_died: bool = False) -> tuple[int, int]:
    """The rule that must survive crashes: every region gets exactly one final or exactly one
    error naming it, after its `inactive`, in audio order, never two, and the session closes
    with `close_code`. A stream-level error (one without a region, then close 1011) is a lost
    stream: accepted only where the test killed a decoder or a segmenter (`stage_died`), and then
    it must be the last word and answers the regions still open. Returns (finals, region errors)."""
    msgs = t.messages
    lost = [m for m in msgs if m["type"] == "error" and "start_time" not in m]
    if lost:
        assert stage_died, f"a stream-level error where no stage died: {lost}"
        assert len(lost) == 1 and msgs[-1] is lost[0], f"a stream-level error must be the last word: {lost}"
        assert t.close_code == 1011, t.close_code
    else:
        assert t.close_code == close_code, (t.close_code, msgs[-3:])
    open_at: float | None = None
    closed: list[tuple[float, float]] = []
    last_start = -1.0
    finals = errors = 0
    for m in t.channel(ch):
        if m["type"] == "active":
            assert open_at is None, m
            open_at = m["time"]
        elif m["type"] == "inactive":
            assert open_at is not None, m
            closed.append((open_at, m["time"]))
            open_at = None
        elif is_region_answer(m):
            assert m["start_time"] >= last_start, f"out of audio order: {m}"
            last_start = m["start_time"]
            assert closed, f"an answer with no region awaiting one (duplicate, or before inactive): {m}"
            assert (m["start_time"], m["end_time"]) == closed.pop(0), m
            finals += m["type"] == "segment"
            errors += m["type"] == "error"
    if not lost:
        assert open_at is None and not closed, f"regions left unanswered: {closed}"
    return finals, errors


def raw_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame, for a client that talks WebSocket by hand (and then stops reading)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
    return head + mask + body


def raw_handshake(sock: socket.socket, host: str, port: int, path: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during handshake")
        reply += chunk
    assert reply.startswith(b"HTTP/1.1 101"), reply


def grpc_requests(steps: list[dict[str, Any] | bytes | str]) -> list[Any]:
    """The same steps as gRPC requests (a raw text step has no gRPC form: an empty request)."""
    from streamer.api import streamer_pb2 as pb

    out = []
    for step in steps:
        if isinstance(step, bytes):
            out.append(pb.Request(audio=step))
        elif isinstance(step, dict) and step.get("request") == "start":
            f = step.get("format")
            start = pb.Start(interim_results=bool(step.get("interim_results")), trace_id=step.get("trace_id", ""))
            if f is not None:
                start.format.CopyFrom(pb.Format(**f))
            out.append(pb.Request(start=start))
        elif isinstance(step, dict) and step.get("request") == "stop":
            out.append(pb.Request(stop=pb.Stop(disconnect=step.get("disconnect", True))))
        else:
            out.append(pb.Request())
    return out


async def grpc_converse(addr: str, route: str, steps: list[dict[str, Any] | bytes | str], timeout: float = 60.0,
                        pace_s: float = 0.0, token: str | None = None) -> Transcript:
    """`converse` over gRPC: the close code is the call's status name (OK, INVALID_ARGUMENT ...)."""
    import grpc

    from streamer.api import streamer_pb2_grpc as pb_grpc
    from streamer.api.convert import from_response

    async def requests() -> Any:
        for req in grpc_requests(steps):
            yield req
            if pace_s and req.WhichOneof("request") == "audio":
                await asyncio.sleep(pace_s)  # pacing: a client sending as it records

    messages: list[dict[str, Any]] = []
    async with grpc.aio.insecure_channel(addr) as channel:
        call = getattr(pb_grpc.StreamerStub(channel), route.capitalize())(
            requests(), metadata=(("token", token),) if token else None)
        status = "OK"
        try:
            async with asyncio.timeout(timeout):
                async for r in call:
                    messages.append(from_response(r))
        except grpc.aio.AioRpcError as e:
            status = e.code().name
    return Transcript(messages, status)
