"""The gRPC service (api/streamer.proto) with grpcio's own client: the same sessions as the
WebSocket routes, the same results, bad input mapped to status codes, the same admission."""

from __future__ import annotations

import array
import asyncio
import os
import re
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest
import soundfile

from streamer.api import streamer_pb2 as pb
from streamer.api import streamer_pb2_grpc as pb_grpc
from streamer.api.convert import from_response, start_request

from audio import model_samples, noise, speech
from conversation import (
    Transcript,
    check_segmented_order,
    check_simple_counts,
    converse,
    grpc_converse,
    idle_warning,
    start_msg,
    stream_steps,
)
from server import CLIENT, Server, actor, summed, wait_for

MONO_16K = {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False}
ONE_FRONT = {"STREAMER_ACTORS_FRONTS": "1"}  # one front: its memory is the one to watch


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("grpc"), env={"STREAMER_LIMITS_MAX_FRAME_BYTES": "65536",
                                                      "STREAMER_SECURITY_TOKEN": "s3cret",
                                                      "STREAMER_LIMITS_IDLE_TIMEOUT_S": "2"}).start()
    try:
        yield s
    finally:
        s.stop()


def test_the_simple_route_counts_every_sample_in_order(srv: Server) -> None:
    rate = 44100
    x = noise(3.0, rate)[None, :].repeat(2, axis=0)
    t = asyncio.run(grpc_converse(srv.grpc, "simple", stream_steps(x, rate, True), token="s3cret"))
    assert t.close_code == "OK"
    for ch in (0, 1):
        check_simple_counts(t, ch, model_samples(x.shape[1], rate))


def test_the_segmented_route_gives_what_the_websocket_gives(srv: Server) -> None:
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning."))
    steps = stream_steps(s.samples[None, :], 16000, False)
    steps[0] = {**steps[0], "token": "s3cret"}  # type: ignore[dict-item]
    over_ws = asyncio.run(converse(srv.ws(), steps))
    over_grpc = asyncio.run(grpc_converse(srv.grpc, "segmented", steps, token="s3cret"))
    check_segmented_order(over_ws, 0)
    check_segmented_order(over_grpc, 0, close_code="OK")
    # The same events and the same results, each in the same order. Not one sequence: a region's
    # final may come before or after the next region's events (events never wait for a model).
    def said(t: Transcript, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return [m for m in t.messages if m["type"] in kinds and not idle_warning(m)]

    for kinds in (("active", "inactive"), ("segment", "error", "warning")):
        assert said(over_grpc, kinds) == said(over_ws, kinds)


def test_the_sequential_route(srv: Server) -> None:
    t = asyncio.run(grpc_converse(srv.grpc, "sequential", stream_steps(noise(5.0)[None, :], 16000, False),
                                  token="s3cret"))
    assert t.close_code == "OK"
    assert [m["count"] for m in t.of_type("segment") if m["is_final"]] == [32000, 32000, 16000]


@pytest.mark.parametrize(("steps", "status", "says"), [
    ([{**start_msg(1, 16000, False), "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 8,
                                                 "is_float": False}}], "INVALID_ARGUMENT", "unsupported format"),
    ([b"\x00\x01" * 100], "INVALID_ARGUMENT", "binary audio before start"),
    ([{"request": "start"}], "INVALID_ARGUMENT", "invalid request"),
    ([start_msg(1, 16000, False), b"\x00" * 70000], "RESOURCE_EXHAUSTED", None),
], ids=["unsupported format", "audio before start", "no format", "over the size limit"])
def test_bad_input_ends_the_call_with_its_status_and_says_why(srv: Server, steps: list[object], status: str,
                                                               says: str | None) -> None:
    t = asyncio.run(grpc_converse(srv.grpc, "segmented", [*steps, {"request": "stop"}], token="s3cret"))  # type: ignore[list-item]
    assert t.close_code == status, t
    if says is not None:
        (error,) = t.of_type("error")
        assert says in error["message"]


def test_a_wrong_or_missing_token_is_unauthenticated(srv: Server) -> None:
    steps = stream_steps(noise(0.5)[None, :], 16000, False)
    for token in ("guess", None):
        t = asyncio.run(grpc_converse(srv.grpc, "simple", steps, token=token))
        assert t.close_code == "UNAUTHENTICATED"
        assert t.messages == [{"type": "error", "channel": 0, "message": "authentication failed"}]


def test_past_the_session_limit_a_call_is_unavailable_with_retry_after(tmp_path: Path) -> None:
    import grpc

    from streamer.api import streamer_pb2 as pb
    from streamer.api import streamer_pb2_grpc as pb_grpc

    s = Server(tmp_path / "run", env={"STREAMER_LIMITS_MAX_SESSIONS": "1"}).start()

    async def hold_one_then_call() -> tuple[str, str | None]:
        async with grpc.aio.insecure_channel(s.grpc) as channel:
            stub = pb_grpc.StreamerStub(channel)
            held: asyncio.Queue[pb.Request] = asyncio.Queue()

            async def forever() -> object:
                while True:
                    yield await held.get()

            first = stub.Simple(forever())
            await held.put(pb.Request(start=pb.Start(format=pb.Format(channels=1, sample_rate=16000, bit_depth=16))))
            # Once the first call holds the only seat (taken when its call arrives at a front).
            await asyncio.to_thread(wait_for, lambda: seats_taken(s) == 1, 30)
            try:
                async for _ in stub.Simple(iter(grpc_requests_one())):
                    pass
            except grpc.aio.AioRpcError as e:
                return e.code().name, dict(e.trailing_metadata() or ()).get("retry-after")
            finally:
                first.cancel()
            return "OK", None

    def grpc_requests_one() -> list[pb.Request]:
        return [pb.Request(start=pb.Start(format=pb.Format(channels=1, sample_rate=16000, bit_depth=16)))]

    try:
        assert asyncio.run(hold_one_then_call()) == ("UNAVAILABLE", "5")
    finally:
        s.stop()


def test_the_client_script_speaks_grpc(srv: Server, tmp_path: Path) -> None:
    wav = tmp_path / "noise.wav"
    soundfile.write(wav, np.asarray(noise(2.0)), 16000, subtype="PCM_16")
    out = subprocess.run([*CLIENT, "-i", str(wav), "--grpc", srv.grpc,
                          "--route", "simple", "--token", "s3cret"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('"type": "segment"') == 4 and "close code OK" in out.stdout


def test_a_generic_client_calls_it_by_reflection_without_the_proto(srv: Server) -> None:
    """grpc_requests (a generic client: it learns the service from the server's reflection) with
    plain dictionaries, audio as base64, as grpcurl would take JSON."""
    import base64

    from grpc_requests import Client

    from audio import pcm_bytes

    client = Client.get_by_endpoint(srv.grpc)
    assert "streamer.v1.Streamer" in client.service_names
    data = pcm_bytes(noise(1.5)[None, :], False)
    requests = [{"start": {"format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16}}},
                *({"audio": base64.b64encode(data[i : i + 8000]).decode()} for i in range(0, len(data), 8000)),
                {"stop": {"disconnect": True}}]
    replies = list(client.request("streamer.v1.Streamer", "Simple", iter(requests), metadata=[("token", "s3cret")]))
    assert [r["output"]["count"] for r in replies] == [8000, 8000, 8000]


# -- limits, as an attacker meets them ------------------------------------------------------------


def sessions_active(srv: Server) -> float:
    """`streamer_front_sessions_active`, summed over the group's fronts."""
    with urllib.request.urlopen(f"{srv.http}/metrics", timeout=5) as r:
        page = r.read().decode()
    return sum(float(v) for v in re.findall(r"streamer_front_sessions_active\{[^}]*\} (\S+)", page))


def seats_taken(srv: Server) -> int:
    """Seats held over every front (front/seats.py's file: one int64 counter per front)."""
    return sum(array.array("q", (srv.run_dir / "seats").read_bytes()))


def released(srv: Server) -> bool:
    return sessions_active(srv) == 0 and seats_taken(srv) == 0


def private_rss(proc: psutil.Process) -> int:
    """A process's own resident memory: RSS less shared pages (code, the shared-memory pools)."""
    m = proc.memory_info()
    return int(m.rss - m.shared)


# glibc keeps freed buffers of a megabyte for reuse rather than returning them (its mmap threshold
# rises to the size of the first one freed), and grpc's threads allocate in arenas of their own.
ALLOCATOR_SLACK = 8 * 2**20


class Peak:
    """The most a process's private RSS grew over its value when this was made, sampled on `sample`."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.base = private_rss(proc)
        self.growth = 0

    def sample(self) -> None:
        self.growth = max(self.growth, private_rss(self.proc) - self.base)


async def read_all(call: Any) -> tuple[str, str, list[dict[str, Any]]]:
    """Every response left on a call, then its status and details."""
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(30):
            async for r in call:
                messages.append(from_response(r))
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details() or "", messages
    return "OK", "", messages


def test_a_client_that_never_reads_is_held_back_in_bounded_memory_and_closed(tmp_path: Path) -> None:
    """Regression: every response went on an unbounded queue without waiting, so the session's outbox
    always looked empty: a client that read nothing was never held back nor closed, and the front's
    memory grew without bound (2.5 MiB/s with this setup). Now a response waits for grpc's flow
    control, as a WebSocket's waits for TCP: `max_outbox` holds the client back, `send_timeout_s`
    closes it (PERMISSION_DENIED), and what is left reaches a client that reads late."""
    read_ahead = 2**20
    srv = Server(tmp_path / "run", env={**ONE_FRONT, "STREAMER_SEGMENTER_CHUNK_S": "0.01",
                                        "STREAMER_LIMITS_MAX_OUTBOX": "20", "STREAMER_LIMITS_SEND_TIMEOUT_S": "2",
                                        "STREAMER_LIMITS_MAX_INFLIGHT_AUDIO_S": "2",
                                        # (a slow machine holds the client back past the warning
                                        # before the window is full; what is checked is results)
                                        "STREAMER_LIMITS_HELD_WARNING_S": "3600",
                                        "STREAMER_LIMITS_MAX_FRAME_BYTES": "65536",
                                        "STREAMER_LIMITS_READ_AHEAD_BYTES": str(read_ahead)}).start()
    try:
        peak = Peak(psutil.Process(actor(srv, "front-0")["pid"]))

        def closed() -> bool:
            peak.sample()
            return "the client read no results for 2 s" in srv.log()

        async def never_read() -> tuple[str, str, list[dict[str, Any]]]:
            # Without BDP probing the client keeps grpc's first 64 KiB window instead of growing it
            # to megabytes (as a slow link would): it is full of results within a second.
            async with grpc.aio.insecure_channel(srv.grpc, options=[("grpc.http2.bdp_probe", 0)]) as channel:
                call = pb_grpc.StreamerStub(channel).Simple()  # type: ignore[no-untyped-call]
                await call.write(start_request(MONO_16K))
                enough = asyncio.Event()

                async def push() -> None:
                    frame = pb.Request(audio=b"\x01\x00" * 1600)  # 0.1 s: ten results of 10 ms
                    while not enough.is_set():
                        await call.write(frame)
                    await call.done_writing()

                pushing = asyncio.ensure_future(push())
                await asyncio.to_thread(wait_for, closed, 30)
                enough.set()
                await asyncio.wait_for(pushing, 10)  # its last write is read (and dropped) as the call ends
                # The session is over; its call, with what grpc could not deliver, keeps the seat
                # until the client reads or leaves: seats bound how many such calls there are.
                await asyncio.to_thread(wait_for, lambda: sessions_active(srv) == 0, 10)
                assert seats_taken(srv) == 1
                return await read_all(call)

        status, details, messages = asyncio.run(never_read())
        assert (status, details) == ("PERMISSION_DENIED", "the client read no results for 2 s")
        assert messages and all(m["type"] == "segment" for m in messages)
        # What the front may hold for it: the intake's read-ahead, grpc's window for its requests
        # (the largest and 64 KiB), the results of the audio in flight (2 s: 200 small ones) and the
        # 20 of the outbox; 64 KiB of results in grpc's hands.
        held = read_ahead + 2 * 65536 + 2 * 65536 + 220 * 1024
        assert peak.growth < held + ALLOCATOR_SLACK, peak.growth / 2**20
        wait_for(lambda: released(srv), 10)
    finally:
        srv.stop()


def test_a_call_whose_client_stops_sending_without_a_stop_ends_and_gives_its_seat_back(srv: Server) -> None:
    """Regression: when a client half-closed its requests without a Stop, the session ended (as a
    WebSocket's does when its client leaves) but the call did not: it waited forever for a response,
    holding its seat, so such calls could take every seat."""

    async def half_close() -> tuple[str, str, list[dict[str, Any]]]:
        async with grpc.aio.insecure_channel(srv.grpc) as channel:
            call = pb_grpc.StreamerStub(channel).Simple(metadata=(("token", "s3cret"),))  # type: ignore[no-untyped-call]
            await call.write(start_request(MONO_16K))
            await call.write(pb.Request(audio=b"\x01\x00" * 16000))
            await call.done_writing()
            return await read_all(call)

    status, _, _ = asyncio.run(half_close())
    assert status == "OK"
    wait_for(lambda: released(srv), 10)


def test_large_requests_held_back_by_the_pipeline_stay_bounded_in_the_front(tmp_path: Path) -> None:
    """Regression: a call read 64 requests ahead of its session, each up to `max_frame_bytes`, and
    grpc's own window grew to 4 MiB more: a client sending 1 MiB requests to a slow model had the
    front hold 94 MiB for it. Now the call holds one request beyond the session's read-ahead, and
    grpc's window is `socket_receive_buffer`, as the WebSocket's kernel buffer is."""
    frame, read_ahead = 2**20, 2**20
    srv = Server(tmp_path / "run", env={**ONE_FRONT, "STREAMER_ACTORS_MODELS": "1", "STREAMER_MODEL_FAKE_MODE": "sleep",
                                        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "1.0",
                                        "STREAMER_LIMITS_MAX_INFLIGHT_AUDIO_S": "1",
                                        "STREAMER_LIMITS_MAX_FRAME_BYTES": str(frame),
                                        "STREAMER_LIMITS_READ_AHEAD_BYTES": str(read_ahead)}).start()
    try:
        peak = Peak(psutil.Process(actor(srv, "front-0")["pid"]))
        held = threading.Event()

        def held_back() -> bool:
            peak.sample()
            return held.is_set()

        async def flood() -> int:
            async with grpc.aio.insecure_channel(srv.grpc) as channel:
                call = pb_grpc.StreamerStub(channel).Simple()  # type: ignore[no-untyped-call]
                await call.write(start_request({"channels": 2, "sample_rate": 48000, "bit_depth": 32,
                                                "is_float": True}))
                audio = pb.Request(audio=os.urandom(frame - 64))  # 2.7 s of audio per request
                sent = 0

                async def push() -> None:
                    nonlocal sent
                    while True:
                        await call.write(audio)
                        sent += 1

                async def read() -> None:
                    async for r in call:
                        if r.type == "warning" and r.message.startswith("held back"):
                            held.set()

                tasks = [asyncio.ensure_future(push()), asyncio.ensure_future(read())]
                try:
                    await asyncio.to_thread(wait_for, held_back, 30)  # the pipeline held it back for 3 s
                finally:
                    call.cancel()
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                return sent

        sent = asyncio.run(flood())
        # What the front may hold for it: the intake's read-ahead and the frame that crossed it, the
        # request the call holds, the one the session waits to feed, the stream's audio kept for a
        # replay (the unanswered second and the frame it is in), grpc's window (the largest request
        # and 64 KiB) and its copies of the one it hands over (as read, as parsed).
        held = read_ahead + 8 * frame
        assert peak.growth < held + ALLOCATOR_SLACK, (peak.growth / 2**20, sent)
        wait_for(lambda: released(srv), 10)
    finally:
        srv.stop()


def test_a_request_that_is_no_protobuf_message_is_invalid(srv: Server) -> None:
    """Regression: a request grpc could not decode killed the call's reader without a word: the
    session waited for the next request until its idle timeout, then blamed the client's silence."""

    async def garbage_after_start() -> tuple[str, str, list[dict[str, Any]]]:
        async with grpc.aio.insecure_channel(srv.grpc) as channel:
            raw = channel.stream_stream("/streamer.v1.Streamer/Simple")  # bytes in, bytes out

            async def requests() -> Any:
                yield start_request(MONO_16K).SerializeToString()
                yield b"\xff\xff\xff\xff"
                await asyncio.Event().wait()

            call = raw(requests(), metadata=(("token", "s3cret"),))
            return await read_all(_Decoded(call))

    status, _, messages = asyncio.run(garbage_after_start())
    assert status == "INVALID_ARGUMENT"
    (error,) = messages
    assert error["type"] == "error" and error["message"].startswith("invalid request"), error


class _Decoded:
    """A call without a deserializer, read as one with it."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def __aiter__(self) -> Any:
        async for raw in self.call:
            yield pb.Response.FromString(raw)


def test_without_the_token_a_call_gets_nothing_but_unauthenticated(srv: Server) -> None:
    """Regression: a call without the token had a session (and a seat) until the auth timeout, and
    its requests were served meanwhile: stops were answered, audio before a start judged. On gRPC
    the token can only come as metadata, so a call without it is refused before anything."""
    steps: list[dict[str, Any] | bytes | str] = [{"request": "stop", "disconnect": False}] * 3
    t = asyncio.run(grpc_converse(srv.grpc, "segmented", [*steps, b"\x00\x01" * 100]))
    assert t.close_code == "UNAUTHENTICATED"
    assert t.messages == [{"type": "error", "channel": 0, "message": "authentication failed"}]


def test_a_call_cancelled_mid_stream_releases_its_session_seat_and_stream_at_once(srv: Server) -> None:
    """A client that cancels (RST_STREAM) while its audio is in the pipeline: grpc cancels the
    call's handler, which cancels the session; its stream is aborted in the pipeline, its seat and
    the sessions gauge go back at once, and nothing of it runs on."""

    async def cancel_after_a_result() -> None:
        async with grpc.aio.insecure_channel(srv.grpc) as channel:
            feed: asyncio.Queue[pb.Request] = asyncio.Queue()

            async def requests() -> Any:
                while True:
                    yield await feed.get()

            call = pb_grpc.StreamerStub(channel).Simple(requests(), metadata=(("token", "s3cret"),))  # type: ignore[no-untyped-call]
            feed.put_nowait(start_request(MONO_16K))
            for _ in range(20):
                feed.put_nowait(pb.Request(audio=b"\x01\x00" * 1600))

            async def live() -> None:  # audio as a live client sends it: the module's 2 s idle limit
                while True:            # must not end it, nor warn before the first result
                    await asyncio.sleep(0.2)
                    feed.put_nowait(pb.Request(audio=b"\x01\x00" * 3200))

            async with asyncio.TaskGroup() as tg:
                speaking = tg.create_task(live())
                async for r in call:  # the pipeline has the stream
                    assert r.type == "segment"
                    break
                # (at heartbeats: none yet, it may be, when the first result is back)
                await asyncio.to_thread(wait_for, lambda: summed(srv, "decoder", "inflight") == 1, 30)
                call.cancel()
                speaking.cancel()

    asyncio.run(cancel_after_a_result())
    wait_for(lambda: released(srv) and summed(srv, "decoder", "inflight") == 0, 30)
    assert "stream ended: aborted" in srv.log()


def test_an_idle_call_is_warned_then_closed(srv: Server) -> None:
    """`idle_timeout_s` over gRPC: a call that keeps its requests open and sends nothing is warned
    at half the time, then ended with PERMISSION_DENIED, as a WebSocket is closed 1008."""

    async def start_then_nothing() -> tuple[str, str, list[dict[str, Any]]]:
        async with grpc.aio.insecure_channel(srv.grpc) as channel:
            async def requests() -> Any:
                yield start_request(MONO_16K)
                await asyncio.Event().wait()  # the request stream stays open, with nothing on it

            call = pb_grpc.StreamerStub(channel).Simple(requests(), metadata=(("token", "s3cret"),))  # type: ignore[no-untyped-call]
            return await read_all(call)

    status, details, messages = asyncio.run(start_then_nothing())
    assert (status, details) == ("PERMISSION_DENIED", "idle timeout: no audio for 2 s")
    assert [m["type"] for m in messages] == ["warning", "error"]
    assert messages[0]["message"] == "no audio for 1 s: the session closes in 1 s"
