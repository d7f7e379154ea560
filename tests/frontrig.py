"""A front's sessions in the test's own process and event loop, with no WebSocket in between.

The group runs as it does under `placement = "shards"` with one front and one model actor, but
every process of it is a part of this one: the shard (the front's `Pipeline`, its decoder and
segmenter, turned by `InLoop`) and the model actor (turned by an `InLoop` of its own) talk
through real ZeroMQ sockets bound in the test's run directory and real shared-memory pools, as
they would across processes. Only the client's socket is replaced: each session talks through a
`MemoryWire`, which plays a client that sends its steps as fast as the session reads them and
reads (or, told so, never reads) what comes back.

So a front's session logic (the protocol's requests, its limits, backpressure, replay) is tested
in milliseconds, with the real pipeline behind it; what only a real socket shows (aiohttp's frame
limit, TCP backpressure, keepalive) stays in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec

from streamer.actors.actor import Actor
from streamer.actors.host import InLoop, build
from streamer.front.app import replay_open
from streamer.front.pipeline import Pipeline
from streamer.front.session import Session
from streamer.front.wire import END, Incoming
from streamer.runtime import config
from streamer.runtime.clock import LoopClock
from streamer.runtime.config import Config
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import Topology, front_inbox
from streamer.transport.messages import RouteName
from streamer.transport.shm import BufferPool
from streamer.transport.sockets import ZmqLink

from conversation import Transcript
from rig import SMALL_POOLS

Step = dict[str, Any] | bytes | str


def _incoming(step: Step) -> Incoming:
    if isinstance(step, bytes):
        return Incoming("binary", step)
    return Incoming("text", step if isinstance(step, str) else json.dumps(step))


class MemoryWire:
    """A client in memory. `steps` are what it says, in order (a dict as a JSON text frame, a str
    verbatim, bytes as a binary frame); once they are said it waits, silent, for the session to
    end, as a client keeps its socket open until the server closes it. What the session sends is
    kept in `sent`; while `reading` is clear the client reads nothing and a send waits."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.incoming: asyncio.Queue[Incoming] = asyncio.Queue()
        for step in steps:
            self.incoming.put_nowait(_incoming(step))
        self.sent: list[dict[str, Any]] = []
        self.sent_at: list[float] = []  # the loop's time of each, in order
        self.reading = asyncio.Event()
        self.reading.set()
        self.close_code: int | None = None
        self.reason = ""
        self._closed = asyncio.Event()
        self.closed_at = 0.0  # the loop's time of the close
        self._allowed: int | None = None  # messages the client reads before it stops (`read`)

    def hang_up(self) -> None:
        """The client goes away (its socket closes) after what it has said."""
        self.incoming.put_nowait(END)

    async def receive(self) -> Incoming:
        if self.close_code is not None:
            return END
        return await self.incoming.get()

    async def send(self, item: dict[str, Any]) -> None:
        """Sent once the client reads; a send pending when the socket closes fails, as aiohttp's
        does when the transport under it is closed."""
        if not self.reading.is_set():
            reading, closed = asyncio.ensure_future(self.reading.wait()), asyncio.ensure_future(self._closed.wait())
            await asyncio.wait((reading, closed), return_when=asyncio.FIRST_COMPLETED)
            reading.cancel()
            closed.cancel()
        if self.closed:
            raise ConnectionResetError("the socket is closed")
        self.sent.append(item)
        self.sent_at.append(asyncio.get_running_loop().time())
        if self._allowed is not None:
            self._allowed -= 1
            if self._allowed == 0:
                self.reading.clear()

    def read(self, n: int | None) -> None:
        """The client reads `n` messages more, then stops (None: everything from now on)."""
        self._allowed = n
        self.reading.set()

    def say_at_once(self, steps: Sequence[Step]) -> None:
        """Say `steps` as one read would bring them: all queued before the session's next turn."""
        for step in steps:
            self.incoming.put_nowait(_incoming(step))

    async def say_paced(self, steps: Sequence[Step], every_s: float) -> None:
        """Say `steps` one every `every_s` of the loop's time, as a live client would."""
        for step in steps:
            self.incoming.put_nowait(_incoming(step))
            await asyncio.sleep(every_s)

    async def close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.reason = code, reason
            self.closed_at = asyncio.get_running_loop().time()
            self._closed.set()
            self.incoming.put_nowait(END)

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    @property
    def gathering(self) -> bool:
        return False


class FrontRig:
    def __init__(self, cfg: Config, pipeline: Pipeline, shard: InLoop, model: InLoop) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.shard = shard
        self.model = model
        self.sessions: list[Session] = []
        self.replaced: list[Actor] = []
        shard.restarted = self._replaced

    def _replaced(self, actor: Actor) -> None:
        """What the front does when its shard replaces an actor (as `front.app.serve` wires it)."""
        self.replaced.append(actor)
        replay_open(self.sessions, f"the {actor.role} raised and was replaced")

    def actor(self, role: str) -> Actor:
        return next(a for a in self.shard.hosted.actors if a.role == role)

    def session(self, route: RouteName, steps: Sequence[Step],
                authenticated: bool = True) -> tuple[Session, MemoryWire]:
        wire = MemoryWire(steps)
        return Session(wire, self.pipeline, route, self.cfg, authenticated=authenticated), wire

    async def run(self, session: Session) -> None:
        self.sessions.append(session)
        try:
            await session.run()
        finally:
            self.sessions.remove(session)

    async def talk(self, route: RouteName, steps: Sequence[Step], timeout: float = 30.0) -> Transcript:
        """One session from its client's first step to its close."""
        session, wire = self.session(route, steps)
        async with asyncio.timeout(timeout):
            await self.run(session)
        return Transcript(wire.sent, wire.close_code)


def _host_in_loop(topo: Topology, index: int, cfg: Config, run_dir: Path, pools: dict[str, BufferPool],
                  stack: AsyncExitStack) -> InLoop:
    """One of the group's processes, as a part of this one: its actors on a real ZeroMQ link,
    keeping the loop's time (a test on virtual time moves theirs too)."""
    host = topo.hosts[index]
    wire = ZmqLink(str(run_dir), tuple(i for i in topo.bound(host) if not i.startswith("front-")), topo.immediate,
                   peers=topo.peers(host))
    loop = asyncio.get_running_loop()
    turning = InLoop(build(topo, host, cfg, wire, pools, clock=LoopClock(loop)), wire, loop, close=wire.close)
    turning.start()
    stack.callback(turning.stop)
    return turning


@asynccontextmanager
async def front_rig(run_dir: Path, **overrides: dict[str, Any]) -> AsyncIterator[FrontRig]:
    """The rig, on `config` with `overrides` by section (`limits={"idle_timeout_s": 0.2}`)."""
    sections: dict[str, dict[str, Any]] = {"pools": dict(SMALL_POOLS), **overrides}
    sections["actors"] = {"fronts": 1, "models": 1, "placement": "shards", **sections.get("actors", {})}
    sections["model"] = {"fake": {"constant_factor": 0.001}, **sections.get("model", {})}
    cfg = config.load(env={}, overrides=sections)
    topo = Topology(cfg)
    run_id = secrets.token_hex(4)
    async with AsyncExitStack() as stack:
        pools: dict[str, BufferPool] = {}
        for name, spec in topo.pools.items():
            pools[name] = pool = BufferPool.create(spec, run_id)
            stack.callback(pool.unlink)
            stack.callback(pool.close)
        model = _host_in_loop(topo, 0, cfg, run_dir, pools, stack)
        shard = _host_in_loop(topo, 1, cfg, run_dir, pools, stack)
        assert topo.hosts[1].first.name == front_inbox(0)
        ctx = ChildContext("front", 0, run_id, str(run_dir), msgspec.to_builtins(cfg), places=topo.hosts[1].places)
        pipeline = Pipeline(ctx, cfg.front.coalesce_ms / 1000, local=shard.hosted.local, kick=shard.kick)
        shard.after = pipeline.receive_local
        pipeline.start()
        stack.push_async_callback(pipeline.close)
        yield FrontRig(cfg, pipeline, shard, model)
