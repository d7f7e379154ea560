"""The gRPC face of the API (`api/streamer.proto`): the WebSocket routes' sessions, over HTTP/2.

Each front serves it beside aiohttp on `[server] grpc_port` (0: off), all fronts on the same
port (grpc sets SO_REUSEPORT, as aiohttp does). A call is one session: the same `Session`
as a WebSocket's, through a `GrpcWire` (a Start, Audio and Stop become the requests a
WebSocket client would send; the JSON objects it would get become `Response` messages), so
the rules, limits, backpressure, replays and ordering are the WebSocket's. What differs:

* admission answers a refused call with UNAVAILABLE (trailing metadata `retry-after`), and
  the token travels as call metadata `token`;
* where a WebSocket session closes with a code, the call ends with the status of `STATUS`;
* a message over `[limits] max_frame_bytes` is refused by grpc itself: RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection

from api import streamer_pb2 as pb
from api import streamer_pb2_grpc as pb_grpc
from api.convert import to_response
from front import protocol
from front.doors import RETRY_AFTER_S, Live, Refused
from front.guard import token_ok
from front.link import FrontLink
from front.metrics import REFUSED
from front.session import Session
from front.wire import END, Incoming
from runtime.config import Config
from transport.messages import Route

log = logging.getLogger("front.grpc")
LINGER_S = 0.5

STATUS = {
    protocol.NORMAL: grpc.StatusCode.OK,
    protocol.GOING_AWAY: grpc.StatusCode.UNAVAILABLE,
    protocol.UNSUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
    protocol.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    protocol.POLICY: grpc.StatusCode.PERMISSION_DENIED,
    protocol.TOO_BIG: grpc.StatusCode.RESOURCE_EXHAUSTED,
    protocol.INTERNAL: grpc.StatusCode.INTERNAL,
    protocol.TRY_LATER: grpc.StatusCode.UNAVAILABLE,
}


def status_of(code: int, reason: str) -> grpc.StatusCode:
    if code == protocol.POLICY and reason.startswith("authentication failed"):
        return grpc.StatusCode.UNAUTHENTICATED
    return STATUS.get(code, grpc.StatusCode.UNKNOWN)


def as_request(req: pb.Request) -> Incoming:
    """What a WebSocket client would have sent for this request."""
    which = req.WhichOneof("request")
    if which == "audio":
        return Incoming("binary", req.audio)
    if which == "stop":
        return Incoming("text", json.dumps({"request": "stop", "disconnect": req.stop.disconnect}))
    if which == "start":
        start: dict[str, Any] = {"request": "start", "interim_results": req.start.interim_results}
        if req.start.HasField("format"):
            f = req.start.format
            start["format"] = {"channels": f.channels, "sample_rate": f.sample_rate, "bit_depth": f.bit_depth,
                               "is_float": f.is_float}
        if req.start.trace_id:
            start["trace_id"] = req.start.trace_id
        return Incoming("text", json.dumps(start))
    return Incoming("text", "{}")  # an empty request: invalid, as `{}` is on a WebSocket


class GrpcWire:
    """A call as a session's wire: requests in, responses out through a queue the RPC drains.

    Its own task reads the requests (at most `INBOX` ahead): the session's reader may be
    cancelled at any moment, and cancelling a read of grpc's request stream in the middle ends
    the stream."""

    INBOX = 64

    def __init__(self, requests: AsyncIterator[pb.Request]) -> None:
        self.out: asyncio.Queue[pb.Response | None] = asyncio.Queue()
        self.code: int | None = None
        self.reason = ""
        self._in: asyncio.Queue[Incoming] = asyncio.Queue(self.INBOX)
        self._reading = asyncio.ensure_future(self._read(requests))

    async def _read(self, requests: AsyncIterator[pb.Request]) -> None:
        try:
            async for req in requests:
                await self._in.put(as_request(req))
        except (grpc.RpcError, grpc.aio.AioRpcError):
            pass  # the client went away
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self._in.put_nowait(END)

    async def receive(self) -> Incoming:
        msg = await self._in.get()
        if msg.kind == "end":
            self._in.put_nowait(END)  # and for whoever asks next
        return msg

    async def linger(self) -> None:
        """Read (and drop) what the client still sends, for a moment (see `_linger`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while (await self._in.get()).kind != "end":
                    pass

    def stop(self) -> None:
        self._reading.cancel()

    async def send(self, item: dict[str, Any]) -> None:
        if self.code is None:
            self.out.put_nowait(to_response(item))

    async def close(self, code: int, reason: str) -> None:
        if self.code is None:
            self.code, self.reason = code, reason
            self.out.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self.code is not None


class Servicer(pb_grpc.StreamerServicer):
    def __init__(self, cfg: Config, link: FrontLink, live: Live) -> None:
        self.cfg, self.link, self.live = cfg, link, live

    async def Segmented(self, requests: AsyncIterator[pb.Request], context: Any) -> AsyncIterator[pb.Response]:
        async for r in self._session("segmented", requests, context):
            yield r

    async def Simple(self, requests: AsyncIterator[pb.Request], context: Any) -> AsyncIterator[pb.Response]:
        async for r in self._session("simple", requests, context):
            yield r

    async def Sequential(self, requests: AsyncIterator[pb.Request], context: Any) -> AsyncIterator[pb.Response]:
        async for r in self._session("sequential", requests, context):
            yield r

    async def _session(self, route: Route, requests: AsyncIterator[pb.Request],
                       context: Any) -> AsyncIterator[pb.Response]:
        cfg = self.cfg
        offered = dict(context.invocation_metadata() or ()).get("token")
        if offered is not None and not token_ok(cfg.security, offered):
            REFUSED.labels("auth").inc()
            await _linger(requests)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
        try:
            seat = self.live.admit()
        except Refused as e:
            await _linger(requests)
            await context.abort(grpc.StatusCode.UNAVAILABLE, e.text, (("retry-after", str(RETRY_AFTER_S)),))
        wire = GrpcWire(requests)
        session = Session(wire, self.link, route, cfg, authenticated=not cfg.security.token or offered is not None)
        self.live.enter(session)
        running = asyncio.ensure_future(session.run())
        try:
            with seat:
                while (response := await wire.out.get()) is not None:
                    yield response
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(running), cfg.limits.send_timeout_s)
        finally:
            self.live.leave(session)
            if not running.done():
                running.cancel()
        code = wire.code if wire.code is not None else protocol.NORMAL
        if code != protocol.NORMAL:
            await wire.linger()
        wire.stop()
        if code != protocol.NORMAL:
            await context.abort(status_of(code, wire.reason), wire.reason or "closed")


async def _linger(requests: AsyncIterator[pb.Request]) -> None:
    """Read (and drop) what the client is still sending, for a moment, before ending the call with
    an error: grpc's client, still writing when the call ends, reports its own failed write
    (INTERNAL) instead of our status. The WebSocket's lingering close, for the same reason."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(LINGER_S):
            async for _ in requests:
                pass


async def serve(cfg: Config, link: FrontLink, live: Live) -> grpc.aio.Server | None:
    """Start the service on `[server] grpc_port` (None when it is 0)."""
    if not cfg.server.grpc_port:
        return None
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", cfg.limits.max_frame_bytes + 1024),
        ("grpc.keepalive_permit_without_calls", 1),
    ])
    pb_grpc.add_StreamerServicer_to_server(Servicer(cfg, link, live), server)  # type: ignore[no-untyped-call]
    # Reflection: generic tools (grpcurl, grpc_requests, Postman) can call it without the .proto.
    reflection.enable_server_reflection((pb.DESCRIPTOR.services_by_name["Streamer"].full_name,
                                         reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"{cfg.server.host}:{cfg.server.grpc_port}")
    await server.start()
    log.info("gRPC on %s:%d", cfg.server.host, cfg.server.grpc_port)
    return server
