"""The HTTP/WebSocket front process: the routes of docs/protocol.md and the group's views.

`[actors] fronts` of these share one port (SO_REUSEPORT: the kernel spreads connections
across them), each with its own pool, its own inbox and its own sessions, so a front's death
drops only its own sessions. Health, `/metrics` and `/api/v1/actors` describe the whole
group from any of them (they read what the supervisor publishes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from streamer.actors.host import InLoop, Process
from streamer.front import grpc_api, protocol
from streamer.front.admission import Admission
from streamer.front.doors import RETRY_AFTER_S, Doors, Refused
from streamer.front.front_metrics import REFUSED, group_page
from streamer.front.guard import SUBPROTOCOL, Proxies, access_logger, handshake_token, origin_ok, redact_logs, token_ok
from streamer.front.pipeline import Pipeline
from streamer.front.processes import Usage
from streamer.front.seats import Seat, Seats
from streamer.front.session import Session
from streamer.front.wire import WebSocketWire
from streamer.runtime import group
from streamer.runtime.config import Config
from streamer.runtime.process import ChildContext, enter_child
from streamer.runtime.topology import ROLES, front_inbox
from streamer.transport.messages import Exited, Roster, RouteName

log = logging.getLogger("front")

CFG: web.AppKey[Config] = web.AppKey("cfg", Config)
PIPELINE: web.AppKey[Pipeline] = web.AppKey("pipeline", Pipeline)
PROXIES: web.AppKey[Proxies] = web.AppKey("proxies", Proxies)
RUN_DIR: web.AppKey[str] = web.AppKey("run_dir", str)
USAGE: web.AppKey[Usage] = web.AppKey("usage", Usage)
INDEX: web.AppKey[int] = web.AppKey("index", int)
LINGER_S = 0.5
ROSTER_EVERY_S = 2.0
WEB = Path(__file__).resolve().parents[3] / "web"  # the repository's web/ (src/streamer/front/app.py)
ADMIN_PATHS = frozenset({"/metrics", "/api/v1/actors"})
RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_S)}


DOORS: web.AppKey[Doors] = web.AppKey("doors", Doors)


def missing_roles(state: group.Group | None) -> list[str]:
    """Roles with no process running, and any shard's decoder or segmenter that is not: each
    carries the sessions of its own fronts, which another shard's cannot take over. (Not when it
    shares its front's process, `placement = "shards"`: that is a front restarting, and the other
    fronts take the new sessions, as when a front of its own restarts.)"""
    up = state.running_roles() if state is not None else set()
    down = [a.name for a in state.actors if a.role in ("decoder", "segmenter") and a.role in up
            and a.state != "running" and not (a.process or "").startswith("front")] if state is not None else []
    return [r for r in ROLES if r not in up] + down


async def page(request: web.Request) -> web.FileResponse:
    """The microphone page (`web/`): plain files, no build step, nothing from another host."""
    return web.FileResponse(WEB / "index.html")


async def health(request: web.Request) -> web.Response:
    if request.app[DOORS].draining:
        return web.json_response({"status": "draining"}, status=503)
    missing = missing_roles(group.read(request.app[RUN_DIR]))
    if missing:
        return web.json_response({"status": "unhealthy", "missing": missing}, status=503)
    return web.json_response({"status": "healthy"})


@web.middleware
async def admin_on_loopback(request: web.Request, handler: Any) -> web.StreamResponse:
    """Metrics and the actors table describe the machine: only local clients see them, unless
    `[server] admin_public` says otherwise (the WebSocket routes are for everyone). Behind a
    trusted proxy the client is whom X-Forwarded-For names, not the proxy: a balancer on this
    machine would otherwise make every client local."""
    if request.path in ADMIN_PATHS and not request.app[CFG].server.admin_public:
        client = request.app[PROXIES].client(request)
        if client is None or not client.is_loopback:
            raise web.HTTPForbidden(text="admin endpoints answer loopback clients only")
    response: web.StreamResponse = await handler(request)
    return response


async def metrics(request: web.Request) -> web.Response:
    """Every process of the group on one page (`?self=1`: this process only)."""
    if request.query.get("self"):
        body = prometheus_client.generate_latest().decode()
    else:
        body = await group_page(request.app[CFG].metrics.host, group.read(request.app[RUN_DIR]), request.app[INDEX])
    return web.Response(text=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


async def actors(request: web.Request) -> web.Response:
    return web.json_response(request.app[USAGE].table())


class ProtocolWebSocket(web.WebSocketResponse):
    """Two fixes to how aiohttp ends a WebSocket, both so that a client learns why it was closed.

    * A frame over `max_msg_size` is closed with 1009 and nothing else; the protocol wants a
      clear `error` first, so it is said on the way out.
    * aiohttp closes the socket as soon as it gave up on the close handshake, often with the
      client's next frames still unread; the kernel then answers with a reset, and a reset
      makes the client's kernel discard our error and close frame before the client reads
      them. So the socket is closed a moment later instead (a lingering close, as nginx
      does): meanwhile asyncio keeps reading and aiohttp drops what it reads.

    The second overrides `_close_transport`, aiohttp's one private hook used here (aiohttp has
    no public way to delay that close): the dependency is pinned below the next minor release,
    and `tests/test_front_close.py` fails if the override stops being called.
    """

    def __init__(self, max_frame_bytes: int, **kwargs: Any) -> None:
        # aiohttp refuses a message of exactly max_msg_size; the limit is the largest one allowed.
        super().__init__(max_msg_size=max_frame_bytes + 1, **kwargs)
        self.max_frame_bytes = max_frame_bytes
        self._transport: asyncio.BaseTransport | None = None

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._transport = request.transport  # public; aiohttp keeps its own request private
        return await super().prepare(request)

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        if code == protocol.TOO_BIG and not message and not self.closed:
            with contextlib.suppress(Exception):
                await self.send_json(protocol.error(f"frame over the size limit of {self.max_frame_bytes} bytes"))
            message = b"frame too big"
        return await super().close(code=code, message=message, drain=drain)

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            asyncio.get_running_loop().call_later(LINGER_S, transport.close)


async def _drop_if_stuck(transport: asyncio.Transport, grace_s: float) -> None:
    """A peer that reads nothing leaves bytes in our write buffer forever, and asyncio would
    keep the socket (and its buffers) until they drain: give it `grace_s`, then reset.

    A reset, not a close: with nothing unread on our side a close sends a FIN, and a peer
    pushing into our closed window learns of it only from its next zero-window probe, which
    TCP backs off to a minute or more. SO_LINGER 0 makes the close an RST, at once."""
    deadline = asyncio.get_running_loop().time() + grace_s
    while transport.get_write_buffer_size() > 0:
        if asyncio.get_running_loop().time() > deadline:
            log.warning("peer is not reading: resetting the connection")
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        await asyncio.sleep(0.1)


def stream_route(route: RouteName) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        cfg = request.app[CFG]
        doors = request.app[DOORS]
        if not origin_ok(cfg.security, request):
            REFUSED.labels("origin").inc()
            raise web.HTTPForbidden(text="origin not allowed")
        try:
            seat = doors.admit()
        except Refused as e:
            raise web.HTTPServiceUnavailable(text=e.text, headers=RETRY_AFTER) from None
        with seat:
            return await seated(request, doors, cfg, seat)

    async def seated(request: web.Request, doors: Doors, cfg: Config, seat: Seat) -> web.StreamResponse:
        # No permessage-deflate, though aiohttp would accept a client's offer (the websockets library
        # and browsers make one): PCM barely compresses, and inflating every frame cost the front
        # (and deflating it the client) more CPU than the audio's own handling.
        ws = ProtocolWebSocket(cfg.limits.max_frame_bytes, autoping=True, protocols=(SUBPROTOCOL,), compress=False)
        offered = handshake_token(request)
        await ws.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None and cfg.limits.socket_send_buffer > 0:
            # Bounds what a client that reads nothing can park in the kernel on our side.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.limits.socket_send_buffer)
        if sock is not None and cfg.limits.socket_receive_buffer > 0:
            # Bounds the audio that can sit in front of a client's ping when we stop reading it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.limits.socket_receive_buffer)
        if offered is not None and not token_ok(cfg.security, offered):
            REFUSED.labels("auth").inc()
            await ws.send_json(protocol.error("authentication failed"))
            await ws.close(code=protocol.POLICY, message=b"authentication failed")
            seat.release()  # the session is over for the client: its seat is free while we linger
            await asyncio.sleep(LINGER_S)
            return ws
        transport = request.transport
        wire = WebSocketWire(ws, transport, cfg.front.read_hold_ms / 1000,
                             holding=lambda: len(doors.sessions) >= cfg.front.read_hold_sessions
                             and session.holdable(cfg.front.read_hold_ms / 1000))
        session = Session(wire, request.app[PIPELINE], route, cfg,
                          authenticated=not cfg.security.token or offered is not None)
        doors.enter(session)
        try:
            await session.run()
        finally:
            doors.leave(session)
            seat.release()
            if transport is not None:
                await _drop_if_stuck(transport, cfg.limits.send_timeout_s)
            if ws.close_code not in (None, protocol.NORMAL, protocol.GOING_AWAY):
                await asyncio.sleep(LINGER_S)  # see _WebSocket: aiohttp closes the socket when we return
        return ws

    return handler


def build_app(cfg: Config, pipeline: Pipeline, run_dir: str, index: int, fronts: int) -> web.Application:
    app = web.Application(middlewares=[admin_on_loopback])
    app[CFG] = cfg
    app[PROXIES] = Proxies(cfg.server.trusted_proxies)
    app[USAGE] = Usage(run_dir)
    app[PIPELINE] = pipeline
    app[RUN_DIR] = run_dir
    app[INDEX] = index
    admission = Admission(cfg.admission.max_busy, cfg.admission.max_queue_delay_s)
    app[DOORS] = Doors(Seats(run_dir, index, fronts, cfg.limits.max_sessions), admission, cfg.limits.max_sessions)
    pipeline.on_load = admission.update
    pipeline.on_exited = StageDeaths(app[DOORS], pipeline.shard)
    app.router.add_get("/api/v1/segmented", stream_route("segmented"))
    app.router.add_get("/api/v1/simple", stream_route("simple"))
    app.router.add_get("/api/v1/sequential", stream_route("sequential"))
    app.router.add_get("/api/v1/health", health)
    if WEB.is_dir():  # a source checkout (make run): the page and its files
        app.router.add_get("/", page)
        app.router.add_static("/web", WEB, follow_symlinks=False)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/actors", actors)
    return app


class StageDeaths:
    """A decoder or segmenter held every open stream's state (resampler, VAD, regions): each
    open stream is played to the pipeline again from its last checkpoint, so its client gets
    what an undisturbed run would have given.

    Only its own shard's: another shard's decoder and segmenter never held this front's streams.
    Once per dead process: actors that shared one (`[actors] placement`) died together, and the
    supervisor's notes for them (one per actor, back to back, the same pid) ask for one replay."""

    def __init__(self, doors: Doors, shard: int = 0) -> None:
        self.doors = doors
        self.shard = shard
        self.replayed_for: int | None = None  # the pid of the last death a replay answered

    def __call__(self, note: Exited) -> None:
        if note.role not in ("decoder", "segmenter") or note.index != self.shard:
            return
        if note.pid == self.replayed_for:
            log.info("%s died with the process already replayed for (pid %d)", note.role, note.pid)
            return
        self.replayed_for = note.pid
        replay_open(self.doors.sessions, f"the {note.role} died ({note.how})")


def replay_open(sessions: Iterable[Session], why: str) -> None:
    """Play every open stream of `sessions` to the pipeline again from its checkpoint: after a
    decoder's or segmenter's death, or its replacement inside this front's own process (a shard's)."""
    open_ = [s for s in sessions if s.stream is not None]
    if open_:
        log.warning("%s: replaying %d open streams", why, len(open_))
    for session in open_:
        session.replay(why)


async def serve(ctx: ChildContext) -> None:
    cfg = ctx.cfg()
    redact_logs()
    shard = None
    if len(ctx.hosted) > 1:  # a shard: this front's decoder and segmenter run in this process's loop
        proc = Process(ctx, bound_elsewhere=(front_inbox(ctx.index),))
        shard = InLoop(proc.hosted, proc.wire, asyncio.get_running_loop(), close=proc.close)
        pipeline = Pipeline(ctx, cfg.front.coalesce_ms / 1000, local=proc.hosted.local, kick=shard.kick)
        shard.after = pipeline.receive_local
        shard.start()
        log.info("%s in this process", " and ".join(p.name for p in ctx.hosted[1:]))
    else:
        pipeline = Pipeline(ctx, cfg.front.coalesce_ms / 1000)
    pipeline.start()
    app = build_app(cfg, pipeline, ctx.run_dir, ctx.index, cfg.front_count)
    if shard is not None:
        doors = app[DOORS]
        shard.restarted = lambda actor: replay_open(doors.sessions, f"the {actor.role} raised and was replaced")
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0,
                           access_log_class=access_logger(app[PROXIES]))
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, reuse_address=True, reuse_port=True)
    await site.start()
    log.info("listening on http://%s:%d", cfg.server.host, cfg.server.port)
    rpc = await grpc_api.serve(cfg, pipeline, app[DOORS])
    ctx.ready()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    async with asyncio.TaskGroup() as tasks:
        beating = tasks.create_task(heartbeat(ctx))
        telling = tasks.create_task(roster(app[DOORS], pipeline))
        await stopped.wait()
        log.info("stopping")
        await app[DOORS].drain(cfg.supervisor.drain_s)
        if rpc is not None:
            await rpc.stop(1.0)
        beating.cancel()
        telling.cancel()
    await runner.cleanup()
    if shard is not None:
        pipeline.flush()  # the sessions' last words (their aborts) reach the decoder before it stops
        shard.stop()  # what the sessions left in the actors is settled by the skeleton's rule
    await pipeline.close()


async def roster(doors: Doors, pipeline: Pipeline) -> None:
    """Every `ROSTER_EVERY_S`, the streams this front has open, to the decoder and the segmenter,
    which forget any other stream of this front. A stream's `Abort` dies with a decoder killed
    before it passed it on, and nothing else would ever end that stream there: its audio and its
    place in the load report would stay for good. A dead decoder's `Open` read late (`Open.gen`)
    can leave one too: the next roster ends it. It is stamped when listed, so a roster read late
    forgets no stream opened after it."""
    while True:
        await asyncio.sleep(ROSTER_EVERY_S)
        pipeline.send(Roster(pipeline.index, [s.stream.id for s in doors.sessions if s.stream is not None],
                             time.monotonic()))


async def heartbeat(ctx: ChildContext) -> None:
    """Beats only while the event loop turns: a loop blocked by a stuck handler goes silent."""
    while True:
        ctx.beat()
        await asyncio.sleep(ctx.beat_every_s / 2)


def main(ctx: ChildContext) -> None:
    enter_child(ctx)
    if ctx.cfg().front.event_loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(ctx))
    else:
        asyncio.run(serve(ctx))
