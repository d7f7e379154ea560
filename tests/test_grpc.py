"""The gRPC service (api/streamer.proto) with grpcio's own client: the same sessions as the
WebSocket routes, the same results, bad input mapped to status codes, the same admission."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from audio import model_samples, noise, speech
from server import Server
from wire import check_segmented_order, check_simple_counts, converse, grpc_converse, start_msg, stream_steps


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("grpc"), env={"STREAMER_LIMITS_MAX_FRAME_BYTES": "65536",
                                                      "STREAMER_SECURITY_TOKEN": "s3cret"}).start()
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
    assert over_grpc.close_code == "OK" and over_ws.close_code == 1000
    check_segmented_order(over_grpc, 0, close_code="OK")
    assert over_grpc.messages == over_ws.messages


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
    assert asyncio.run(grpc_converse(srv.grpc, "simple", steps, token="guess")).close_code == "UNAUTHENTICATED"
    missing = asyncio.run(grpc_converse(srv.grpc, "simple", steps))
    assert missing.close_code == "UNAUTHENTICATED"
    assert missing.messages == [{"type": "error", "channel": 0, "message": "authentication failed"}]


def test_past_the_session_limit_a_call_is_unavailable_with_retry_after(tmp_path: Path) -> None:
    import grpc

    from api import streamer_pb2 as pb
    from api import streamer_pb2_grpc as pb_grpc

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
            await asyncio.sleep(1.0)  # the first session holds the only seat
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
    out = subprocess.run([sys.executable, "-m", "client.stream", "-i", str(wav), "--grpc", srv.grpc,
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
