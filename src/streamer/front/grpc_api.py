"""The gRPC face of the API (`api/streamer.proto`): the WebSocket routes' sessions, over HTTP/2.

Each front serves it beside aiohttp on `[server] grpc_port` (0: off), all fronts on the same
port (grpc sets SO_REUSEPORT, as aiohttp does). A call is one session: the same `Session`
as a WebSocket's, through a `GrpcWire` (a Start, Audio and Stop become the requests a
WebSocket client would send; the JSON objects it would get become `Response` messages), so
the rules, limits, backpressure, replays and ordering are the WebSocket's. What differs:

* admission answers a refused call with UNAVAILABLE (trailing metadata `retry-after`), and
  the token travels as call metadata `token` (a Start cannot carry one): a call without it
  is refused before it gets a session, UNAUTHENTICATED;
* where a WebSocket session closes with a code, the call ends with the status of `STATUS`;
* a message over `[limits] max_frame_bytes` is refused by grpc itself: RESOURCE_EXHAUSTED
  (one more than `socket_receive_buffer` over it cannot all be sent: see `serve`);
* HTTP/2 flow control stands where TCP's does (see `GrpcWire` and `serve`), and a call whose
  client never reads outlives its session (grpc's Python server cannot reset one call), so
  its seat is given back when grpc is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection

from streamer.api import streamer_pb2 as pb
from streamer.api import streamer_pb2_grpc as pb_grpc
from streamer.api.convert import to_response
from streamer.front import protocol
from streamer.front.doors import RETRY_AFTER_S, Doors, Refused
from streamer.front.front_metrics import REFUSED
from streamer.front.guard import token_ok
from streamer.front.pipeline import Pipeline
from streamer.front.session import Session
from streamer.front.wire import END, Incoming
from streamer.runtime.config import Config
from streamer.transport.messages import RouteName

log = logging.getLogger("front.grpc")
LINGER_S = 0.5
Context: TypeAlias = "grpc.aio.ServicerContext[pb.Request, pb.Response]"

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


# What grpc could not decode: invalid, as a WebSocket's unknown request is (1007: INVALID_ARGUMENT).
UNDECODABLE = Incoming("text", json.dumps({"request": "undecodable protobuf"}))


class GrpcWire:
    """A call as a session's wire, holding as little of it as the session's limits need.

    Requests: a task of its own reads them (the session's reader may be cancelled at any moment,
    and a read of grpc's cancelled in the middle loses the request it was taking), one at a time:
    the next is read only once the session took the last. So the call holds one request
    (`max_frame_bytes`) beyond grpc's window and the session's read-ahead, whatever they are.

    Responses: `send` writes each to the call and returns when grpc has taken it, which it does
    only while the client's flow-control window has room. A client that reads nothing holds the
    session's sender there, as a full socket does a WebSocket's, so the session's outbox fills and
    its `max_outbox` and `send_timeout_s` apply: nothing waits here."""

    def __init__(self, context: Context) -> None:
        self.code: int | None = None
        self.reason = ""
        self._context = context
        self._in: asyncio.Queue[Incoming] = asyncio.Queue(1)
        self._ended = False
        self._reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (msg := await self._next_request()).kind != "end":
            await self._in.put(msg)
            del msg  # the session has it: it is not kept here
            await self._in.join()  # taken: only now read the next
        self._in.put_nowait(END)  # the queue is empty: the last request was taken

    async def _next_request(self) -> Incoming:
        """grpc's next request as a WebSocket message (the parsed request itself is let go)."""
        try:
            req = await self._context.read()
        except DecodeError:
            return UNDECODABLE
        except grpc.aio.BaseError:
            return END  # the call is over
        return END if req is grpc.aio.EOF else as_request(req)

    async def receive(self) -> Incoming:
        if self._ended:
            return END
        msg = await self._in.get()  # a cancelled get loses nothing
        self._in.task_done()
        self._ended = msg.kind == "end"
        return msg

    async def linger(self) -> None:
        """Read (and drop) what the client still sends, for a moment (see `_linger`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_S):
                while (await self.receive()).kind != "end":
                    pass

    def __enter__(self) -> GrpcWire:
        return self

    def __exit__(self, *exc: object) -> None:
        """The session is over, however it ended: stop reading the client (grpc's window holds it)."""
        self._reading.cancel()

    async def send(self, item: dict[str, Any]) -> None:
        if self.code is not None:
            return
        try:
            await self._context.write(to_response(item))
        except grpc.aio.BaseError as e:  # the call is over (cancelled, or ended): as a closed socket
            raise ConnectionError(f"the call is over: {e!r}") from e

    async def close(self, code: int, reason: str) -> None:
        """How the session ended: the call ends with its status once the session is over."""
        if self.code is None:
            self.code, self.reason = code, reason

    @property
    def closed(self) -> bool:
        return self.code is not None

    @property
    def gathering(self) -> bool:
        return False


class Servicer(pb_grpc.StreamerServicer):
    """The three routes. Each is a coroutine writing through its context rather than an async
    generator: a generator's code runs only while grpc asks it for the next response, so a call
    whose client does not read could neither end its session nor give back its seat."""

    def __init__(self, cfg: Config, pipeline: Pipeline, doors: Doors) -> None:
        self.cfg, self.pipeline, self.doors = cfg, pipeline, doors

    async def Segmented(self, requests: AsyncIterator[pb.Request], context: Context) -> None:
        await self._session("segmented", requests, context)

    async def Simple(self, requests: AsyncIterator[pb.Request], context: Context) -> None:
        await self._session("simple", requests, context)

    async def Sequential(self, requests: AsyncIterator[pb.Request], context: Context) -> None:
        await self._session("sequential", requests, context)

    async def _session(self, route: RouteName, requests: AsyncIterator[pb.Request], context: Context) -> None:
        cfg = self.cfg
        # The token can only come as metadata here (a Start has none): a call without it gets no
        # session, so nothing it sends is served and it takes no seat.
        if not token_ok(cfg.security, dict(context.invocation_metadata() or ()).get("token")):
            REFUSED.labels("auth").inc()
            await context.write(to_response(protocol.error("authentication failed")))
            await _linger(requests)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication failed")
        try:
            seat = self.doors.admit()
        except Refused as e:
            await _linger(requests)
            await context.abort(grpc.StatusCode.UNAVAILABLE, e.text, (("retry-after", str(RETRY_AFTER_S)),))
        # The seat is the call's until grpc is done with it: a client that never reads keeps its
        # call (and what grpc holds for it) after its session ended, and only seats bound how many
        # such calls there are, as the WebSocket's reset of a stuck socket does there.
        context.add_done_callback(lambda _: seat.release())
        with GrpcWire(context) as wire:
            await self._run(Session(wire, self.pipeline, route, cfg))
            if wire.code not in (None, protocol.NORMAL):
                await wire.linger()
        if wire.code not in (None, protocol.NORMAL):
            await context.abort(status_of(wire.code, wire.reason), wire.reason or "closed")

    async def _run(self, session: Session) -> None:
        """The session, counted while it runs. Nothing here keeps it once it is over, so a call
        waiting for its client to read holds only what grpc holds, not the undelivered results."""
        self.doors.enter(session)
        try:
            await session.run()  # a cancelled call cancels it here: its stream is aborted at once
        finally:
            self.doors.leave(session)


async def _linger(requests: AsyncIterator[pb.Request]) -> None:
    """Read (and drop) what the client is still sending, for a moment, before ending the call with
    an error: grpc's client, still writing when the call ends, reports its own failed write
    (INTERNAL) instead of our status. The WebSocket's lingering close, for the same reason."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(LINGER_S):
            async for _ in requests:
                pass


async def serve(cfg: Config, pipeline: Pipeline, doors: Doors) -> grpc.aio.Server | None:
    """Start the service on `[server] grpc_port` (None when it is 0)."""
    if not cfg.server.grpc_port:
        return None
    largest = cfg.limits.max_frame_bytes + 1024  # a request: audio and its framing
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", largest),
        ("grpc.keepalive_permit_without_calls", 1),
        # What a client may send ahead of what its call has read: the largest request and
        # `socket_receive_buffer` more (as a WebSocket's kernel buffer), fixed, instead of the
        # window grpc grows by probing the link (to 4 MiB a call on loopback, more on a long fat
        # pipeline). Not less: a client learns its request was too big (RESOURCE_EXHAUSTED) only if
        # its write of it completes; grpcio's client reports its own failed write (INTERNAL).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", largest + cfg.limits.socket_receive_buffer),
    ])
    pb_grpc.add_StreamerServicer_to_server(Servicer(cfg, pipeline, doors), server)  # type: ignore[no-untyped-call]
    # Reflection: generic tools (grpcurl, grpc_requests, Postman) can call it without the .proto.
    reflection.enable_server_reflection((pb.DESCRIPTOR.services_by_name["Streamer"].full_name,
                                         reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"{cfg.server.host}:{cfg.server.grpc_port}")
    await server.start()
    log.info("gRPC on %s:%d", cfg.server.host, cfg.server.grpc_port)
    return server
