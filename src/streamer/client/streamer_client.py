"""`streamer-client`: stream an audio file to the server and print what comes back.

It sends the file's own format where the protocol has it (16-bit integer or 32-bit float
PCM, any rate and channel count; other encodings are sent as 32-bit float), prints every
message as it arrives with its arrival time, and ends with a summary: time to first
result, total time, segments, and audio seconds streamed per wall second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import soundfile

from streamer.runtime import logs, telemetry

DEFAULT_ADDR = "ws://localhost:8080/api/v1/segmented"


@dataclass
class Pcm:
    """Interleaved little-endian PCM and the `format` object that describes it."""

    data: bytes
    channels: int
    sample_rate: int
    is_float: bool

    @property
    def bit_depth(self) -> int:
        return 32 if self.is_float else 16

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bit_depth // 8

    @property
    def seconds(self) -> float:
        return len(self.data) / self.frame_bytes / self.sample_rate

    def format(self) -> dict[str, Any]:
        return {"channels": self.channels, "sample_rate": self.sample_rate,
                "bit_depth": self.bit_depth, "is_float": self.is_float}


def read_file(path: str) -> Pcm:
    info = soundfile.info(path)
    if info.subtype == "PCM_16":
        samples = soundfile.read(path, dtype="int16", always_2d=True)[0]
        return Pcm(samples.astype("<i2").tobytes(), info.channels, info.samplerate, False)
    samples = soundfile.read(path, dtype="float32", always_2d=True)[0]
    return Pcm(samples.astype("<f4").tobytes(), info.channels, info.samplerate, True)


@dataclass
class Report:
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    close_code: int | str | None = None  # a WebSocket close code, or a gRPC status name
    reconnects: int = 0
    sent_all: bool = False  # the last connection took the whole file
    started: float = 0.0
    finished: float = 0.0
    audio_s: float = 0.0

    @property
    def first_result_s(self) -> float | None:
        for m, t in zip(self.messages, self.arrivals, strict=True):
            if m.get("type") == "segment":
                return t - self.started
        return None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    def finals(self) -> list[float]:
        """Where each final heard so far ends, as a time of the whole file."""
        return [m["end_time"] for m in self.of_type("segment") if m.get("is_final") is not False]

    def transcript(self) -> dict[int, str]:
        """The text of every final, in audio order, per channel (for a model that gives text)."""
        finals = sorted((m["channel"], m["start_time"], m["text"]) for m in self.of_type("segment")
                        if m.get("is_final") is not False and m.get("text"))
        out: dict[int, str] = {}
        for ch, _, text in finals:
            out[ch] = f"{out[ch]} {text}" if ch in out else text
        return out

    def summary(self) -> str:
        total = self.finished - self.started
        first = self.first_result_s
        return (f"time to first result: {'-' if first is None else f'{first:.3f} s'}; total: {total:.3f} s; "
                f"segments: {len(self.of_type('segment'))}; errors: {len(self.of_type('error'))}; "
                f"audio: {self.audio_s:.2f} s; {self.audio_s / total if total else 0:.1f} audio s per wall s; "
                f"close code {self.close_code}" + (f"; reconnected {self.reconnects} times" if self.reconnects else ""))


RECONNECT_CODES = {1006, 1011, 1012, 1013}  # the connection or the server failed, not the request
# The gRPC statuses that mean the same as those close codes.
GRPC_AS_CLOSE = {"UNAVAILABLE": 1013, "INTERNAL": 1011, "UNKNOWN": 1006, "CANCELLED": 1006}
TIME_FIELDS = ("time", "start_time", "end_time")


def backoff_s(fruitless: int) -> float:
    """The wait before connecting again: short after a connection that made progress (a front's
    death is over once another front takes the stream), doubling while connections bring nothing."""
    return min(0.2 * (1 << min(max(fruitless - 1, 0), 4)), 2.0)


async def stream(url: str, pcm: Pcm, *, chunk_bytes: int = 0, real_time: bool = False,
                 interim: bool = False, trace_id: str | None = None, echo: bool = False,
                 reconnects: int = 5, token: str | None = None, grpc_route: str | None = None) -> Report:
    """Send `pcm` as one stream and collect every message until the server closes.

    If the connection is lost (1006: our front died) or the server gives up on the stream
    (1011, 1012, 1013, or a 503 at the handshake), it says so, connects again and sends the
    rest as a new stream, from the end of the last final it got (the region it was in is
    heard again); times in that stream's messages are moved by where it began, so the report
    reads as one stream. At most `reconnects` times, each after a short wait (`backoff_s`: 0.2 s
    after a connection that brought a final, doubling up to 2 s while they bring nothing). With
    `grpc_route`, `url` is a gRPC address (host:port) and the stream goes over gRPC to that route."""
    report = Report(audio_s=pcm.seconds)
    report.started = time.monotonic()
    resume_s = 0.0
    fruitless = 0  # connections in a row that brought no new final: the back-off grows with them only
    for attempt in range(reconnects + 1):
        once = _stream_once if grpc_route is None else _grpc_stream_once
        before = len(report.finals())
        try:
            code = await once(url, pcm, report, resume_s, chunk_bytes=chunk_bytes, real_time=real_time,
                              interim=interim, trace_id=trace_id, echo=echo, token=token, route=grpc_route)
        except aiohttp.WSServerHandshakeError as e:
            if e.status != 503 or attempt == reconnects:
                raise
            wait = float(e.headers.get("Retry-After", "1") if e.headers else 1)
            print(f"server busy (503): connecting again in {wait:g} s", file=sys.stderr, flush=True)
            await asyncio.sleep(wait)
            continue
        except aiohttp.ClientConnectorError as e:  # nobody listening: the server is restarting
            if attempt == reconnects:
                raise
            print(f"cannot connect ({e.os_error}): trying again", file=sys.stderr, flush=True)
            fruitless += 1
            await asyncio.sleep(backoff_s(fruitless))
            continue
        except aiohttp.ClientConnectionError as e:  # the front died during the handshake: as after one
            if attempt == reconnects:
                raise
            print(f"connection lost ({type(e).__name__})", file=sys.stderr, flush=True)
            code = 1006
        report.close_code = code
        # 1001: the server is shutting down; if that cut the stream short, go on elsewhere.
        cut_short = code == 1001 and not report.sent_all
        if (code not in RECONNECT_CODES and not cut_short) or attempt == reconnects:
            break
        finals = report.finals()
        fruitless = 0 if len(finals) > before else fruitless + 1
        resume_s = max([resume_s, *finals])
        report.reconnects += 1
        print(f"connection lost (close code {code}): reconnecting, resuming at {resume_s:.2f} s",
              file=sys.stderr, flush=True)
        await asyncio.sleep(backoff_s(fruitless))
    report.finished = time.monotonic()
    return report


def _heard(report: Report, item: dict[str, Any], from_s: float, echo: bool) -> None:
    for key in TIME_FIELDS:  # as times of the whole file, not of this stream
        if from_s and key in item:
            item[key] = round(item[key] + from_s, 4)
    report.messages.append(item)
    report.arrivals.append(time.monotonic())
    if echo:
        print(f"{time.monotonic() - report.started:8.3f}s {json.dumps(item)}", flush=True)
        if item.get("type") == "segment" and item.get("text"):
            final = "final" if item.get("is_final") is not False else "so far"
            print(f"{'':10}[{item['start_time']:.2f}-{item['end_time']:.2f} ch{item['channel']} "
                  f"{final}] {item['text']}", flush=True)


async def _grpc_stream_once(addr: str, pcm: Pcm, report: Report, from_s: float, *, chunk_bytes: int,
                            real_time: bool, interim: bool, trace_id: str | None, echo: bool, token: str | None,
                            route: str | None) -> int | str | None:
    import grpc

    from streamer.api import streamer_pb2 as pb
    from streamer.api import streamer_pb2_grpc as pb_grpc
    from streamer.api.convert import from_response, start_request

    chunk = chunk_bytes or max(pcm.frame_bytes, pcm.frame_bytes * pcm.sample_rate // 10)
    first = int(from_s * pcm.sample_rate) * pcm.frame_bytes
    bytes_per_s = pcm.frame_bytes * pcm.sample_rate

    async def requests() -> AsyncIterator[pb.Request]:
        yield start_request(pcm.format(), interim, trace_id or "")
        began = time.monotonic()
        for sent in range(first, len(pcm.data), chunk):
            yield pb.Request(audio=pcm.data[sent : sent + chunk])
            if real_time and (ahead := (sent + chunk - first) / bytes_per_s - (time.monotonic() - began)) > 0:
                await asyncio.sleep(ahead)
        report.sent_all = True
        yield pb.Request(stop=pb.Stop(disconnect=True))

    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.StreamerStub(channel)  # type: ignore[no-untyped-call]
        method = getattr(stub, (route or "segmented").capitalize())
        try:
            async for r in method(requests(), metadata=(("token", token),) if token else None):
                _heard(report, from_response(r), from_s, echo)
        except grpc.aio.AioRpcError as e:
            print(f"streamer-client: {e.code().name}: {e.details()}", file=sys.stderr, flush=True)
            name: str = e.code().name
            return GRPC_AS_CLOSE.get(name, name)
    return "OK"


async def _stream_once(url: str, pcm: Pcm, report: Report, from_s: float, *, chunk_bytes: int, real_time: bool,
                       interim: bool, trace_id: str | None, echo: bool, token: str | None,
                       route: str | None) -> int | str | None:
    chunk = chunk_bytes or max(pcm.frame_bytes, pcm.frame_bytes * pcm.sample_rate // 10)
    start: dict[str, Any] = {"request": "start", "format": pcm.format(), "interim_results": interim}
    if trace_id:
        start["trace_id"] = trace_id
    if token:
        start["token"] = token
    first = int(from_s * pcm.sample_rate) * pcm.frame_bytes
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        began = time.monotonic()

        async def receive() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    _heard(report, json.loads(msg.data), from_s, echo)

        reader = asyncio.create_task(receive())
        await ws.send_json(start)
        bytes_per_s = pcm.frame_bytes * pcm.sample_rate
        for sent in range(first, len(pcm.data), chunk):
            if ws.closed:
                break
            try:
                await ws.send_bytes(pcm.data[sent : sent + chunk])
            except (ConnectionError, aiohttp.ClientError):
                break
            if real_time:
                ahead = (sent + chunk - first) / bytes_per_s - (time.monotonic() - began)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        else:
            report.sent_all = not ws.closed
        if not ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await ws.send_json({"request": "stop", "disconnect": True})
        await reader
        return ws.close_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamer-client", description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="audio file (anything libsndfile reads)")
    parser.add_argument("--addr", default=DEFAULT_ADDR, help=f"WebSocket URL (default {DEFAULT_ADDR})")
    parser.add_argument("--chunk-size", type=int, default=0, help="bytes per binary frame (default: 100 ms)")
    parser.add_argument("--real-time", action="store_true", help="send at the audio's own pace")
    parser.add_argument("--interim-results", action="store_true", help="ask for interim results")
    parser.add_argument("--trace-id", help="W3C traceparent to parent the server's spans on")
    parser.add_argument("--grpc", metavar="HOST:PORT", help="speak gRPC to this address instead of the WebSocket")
    parser.add_argument("--route", default="segmented", choices=("segmented", "simple", "sequential"),
                        help="with --grpc: the route (default segmented); a WebSocket's is in --addr")
    parser.add_argument("--token", help="the server's token, if it has one")
    parser.add_argument("--reconnects", type=int, default=5,
                        help="how often to reconnect after a lost connection or server failure (default 5)")
    args = parser.parse_args(argv)
    try:
        pcm = read_file(args.input)
    except (RuntimeError, OSError, soundfile.LibsndfileError) as e:
        print(f"streamer-client: cannot read {args.input}: {e}", file=sys.stderr)
        return 2
    print(f"streaming {args.input}: {pcm.seconds:.2f} s, {pcm.channels} ch, {pcm.sample_rate} Hz, "
          f"{'f32' if pcm.is_float else 's16'} to {args.addr}", flush=True)
    # The client's own root span (exported when OTEL_EXPORTER_OTLP_ENDPOINT is set); its
    # traceparent rides in the start message, so the server's spans join this trace.
    telemetry.setup("client", service="streamer-client")
    tracer = telemetry.tracer("streamer.client")
    with tracer.start_as_current_span("stream", context=telemetry.context_of(args.trace_id), attributes={
            "audio.file": os.path.basename(args.input), "audio.seconds": pcm.seconds}) as span:
        traceparent = telemetry.traceparent_of(span) or args.trace_id
        try:
            report = asyncio.run(stream(args.grpc or args.addr, pcm, chunk_bytes=args.chunk_size,
                                        real_time=args.real_time, interim=args.interim_results, trace_id=traceparent,
                                        echo=True, reconnects=args.reconnects, token=args.token,
                                        grpc_route=args.route if args.grpc else None))
        except aiohttp.ClientError as e:
            print(f"streamer-client: {e}", file=sys.stderr)
            return 1
    print(report.summary(), flush=True)
    for ch, text in sorted(report.transcript().items()):
        print(f"transcript (channel {ch}): {text}", flush=True)
    if traceparent:
        print(f"trace id: {logs.trace_of(traceparent)}", flush=True)
    return 0 if report.close_code in (1000, "OK") else 1


if __name__ == "__main__":
    sys.exit(main())
