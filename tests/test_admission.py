"""Who gets in, by the load the segmenter reports: the rules (`front/admission.py`) on their
own, and the doors of real front apps in the test's process, two of them sharing a run
directory as two fronts of one server do. No other process: the test plays the segmenter,
sending its `Load` reports into a front's inbox as the segmenter would."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import zmq
from aiohttp.test_utils import TestServer

from streamer.front.admission import STALE_S, Admission
from streamer.front.app import DOORS, build_app
from streamer.front.doors import Doors
from streamer.front.pipeline import Pipeline
from streamer.runtime import config
from streamer.runtime.clock import FakeClock
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import Topology, front_inbox
from streamer.transport import sockets
from streamer.transport.messages import Load, Packet, encode
from streamer.transport.shm import BufferPool

FRONTS = 2
SMALL_POOLS = {"front_slot_bytes": 4096, "front_slots": 64}


def load(per_stream: float, streams: int = 0, busy: float = 0.0, queue_delay_s: float = 0.0) -> Load:
    """A report of two model actors: with `max_busy` 0.85 they have room for 1.7 model-s/s."""
    return Load(streams=streams, actors=2, busy=busy, per_stream=per_stream, queue_delay_s=queue_delay_s,
                queued_audio_s=0.0)


def rule(admission: Admission, sessions: int) -> str | None:
    refusal = admission.refusal(sessions)
    return None if refusal is None else refusal.rule


def test_models_behind_or_busy_refuse_whatever_the_count() -> None:
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    assert rule(admission, 0) is None  # no report yet: nothing to go by
    admission.update(load(0.0, streams=1, busy=0.1, queue_delay_s=1.5))
    assert rule(admission, 0) == "behind"
    admission.update(load(0.0, streams=1, busy=1.8))
    assert rule(admission, 0) == "busy"


def shard(load: Load, k: int, costed_s: float = 0.0) -> Load:
    return msgspec.structs.replace(load, shard=k, costed_s=costed_s)


def test_every_shards_report_counts_the_shared_models_are_as_busy_as_all_of_them_together() -> None:
    """Each shard's segmenter sees only the model time its own work took: a front admits by the
    sum, and by the longest wait of any shard (a newcomer's work waits for the same actors)."""
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(shard(load(0.2, streams=2, busy=0.9), 0, costed_s=10.0))
    assert rule(admission, 0) is None  # 0.9 of 1.7
    admission.update(shard(load(0.4, streams=2, busy=0.9), 1, costed_s=10.0))
    assert rule(admission, 0) == "busy"  # 1.8 of 1.7
    admission.update(shard(load(0.4, streams=2, busy=0.1), 1, costed_s=10.0))
    assert admission.load is not None and admission.load.per_stream == 0.3  # over the audio it was learned from
    assert rule(admission, 4) is None and rule(admission, 5) == "demand"  # 6 x 0.3 = 1.8
    admission.update(shard(load(0.4, streams=2, queue_delay_s=1.5), 1, costed_s=10.0))
    assert rule(admission, 0) == "behind"


def test_a_shard_of_new_streams_does_not_make_a_stream_look_cheaper() -> None:
    """Shard 1's streams have no cost known yet (none has answered enough audio): the cost
    learned over shard 0's streams stands, as one segmenter holding them all would report."""
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(shard(load(0.4, streams=10), 0, costed_s=40.0))
    admission.update(shard(load(0.0, streams=10), 1))
    assert admission.load is not None and admission.load.per_stream == 0.4
    assert rule(admission, 4) == "demand"  # 5 x 0.4 = 2.0 > 1.7


def test_a_shard_that_stopped_reporting_no_longer_decides() -> None:
    """Its segmenter is down or restarting: its last report (behind, here) stops counting
    after `STALE_S`, and the shards that report decide."""
    clock = FakeClock()
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0, clock=clock)
    admission.update(shard(load(0.0, streams=1, queue_delay_s=3.0), 1))
    admission.update(shard(load(0.0, streams=1), 0))
    assert rule(admission, 0) == "behind"
    clock.advance(STALE_S + 0.5)
    admission.update(shard(load(0.0, streams=1), 0))
    assert rule(admission, 0) is None


def test_the_demand_of_one_more_stream_is_counted_over_the_sessions_open() -> None:
    admission = Admission(max_busy=0.85, max_queue_delay_s=1.0)
    admission.update(load(0.3))
    assert rule(admission, 4) is None  # 5 x 0.3 = 1.5 <= 1.7
    assert rule(admission, 5) == "demand"  # 6 x 0.3 = 1.8


class Front:
    """One front app (`front/app.py`) served in the test's process, with its real pipeline and inbox."""

    def __init__(self, server: TestServer, pipeline: Pipeline, segmenter: zmq.Socket[Any]) -> None:
        self.server = server
        self.pipeline = pipeline
        self._segmenter = segmenter

    @property
    def live(self) -> Doors:
        return self.server.app[DOORS]  # type: ignore[index]

    def url(self) -> str:
        return str(self.server.make_url("/api/v1/segmented"))

    async def report(self, load: Load) -> None:
        """The segmenter's report, into this front's inbox; returns once the front has it."""
        assert sockets.try_send(self._segmenter, encode(Packet(None, [load])))
        await until(lambda: self.live.admission.load == load)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)  # polling: the condition is the wait


@asynccontextmanager
async def fronts(run_dir: Path) -> AsyncIterator[list[Front]]:
    """`FRONTS` fronts of one (pretend) server: their own pools, inboxes and apps, one seats file."""
    cfg = config.load(env={}, overrides={"actors": {"fronts": FRONTS, "models": 2}, "pools": SMALL_POOLS})
    run_id = secrets.token_hex(4)
    zctx: zmq.Context[Any] = zmq.Context()
    async with AsyncExitStack() as stack:
        stack.callback(zctx.destroy, linger=0)
        out = []
        for index in range(FRONTS):
            pool = BufferPool.create(Topology(cfg).pools[front_inbox(index)], run_id)
            stack.callback(pool.unlink)
            stack.callback(pool.close)
            pipeline = Pipeline(ChildContext("front", index, run_id, str(run_dir), msgspec.to_builtins(cfg)), 0.0)
            pipeline.start()
            stack.push_async_callback(pipeline.close)
            server = TestServer(build_app(cfg, pipeline, str(run_dir), index, FRONTS))
            await server.start_server()
            stack.push_async_callback(server.close)
            segmenter = sockets.outbox(zctx, run_dir, front_inbox(index))
            out.append(Front(server, pipeline, segmenter))
        yield out


async def knock(http: aiohttp.ClientSession, front: Front) -> aiohttp.ClientWebSocketResponse | None:
    """A WebSocket to `front` (it never sends `start`), or None if it was refused with 503."""
    try:
        return await http.ws_connect(front.url())
    except aiohttp.WSServerHandshakeError as e:
        assert e.status == 503
        return None


async def admitted(http: aiohttp.ClientSession, front: Front, kept: list[aiohttp.ClientWebSocketResponse]) -> int:
    """Knock on `front` until it refuses; how many got in (kept open in `kept`)."""
    n = 0
    while (ws := await knock(http, front)) is not None:
        kept.append(ws)
        n += 1
        assert n < 50, "admission never refused"
    return n


def test_sockets_opened_and_closed_without_start_around_a_report_cannot_open_room(tmp_path: Path) -> None:
    """Regression: a front counted its sessions admitted since the last report, and subtracted
    those that ended. A socket that never sent `start` was never in a report, so opening
    sockets before a report and closing them after drove the count below zero, and the server
    admitted past its capacity (here 8 sessions where 5 fit)."""

    async def run() -> int:
        async with fronts(tmp_path) as (front, _), aiohttp.ClientSession() as http:
            await front.report(load(0.3))  # room for 1.7 / 0.3: 5 streams
            idle = [ws for _ in range(3) if (ws := await knock(http, front)) is not None]
            assert len(idle) == 3
            await front.report(load(0.3))  # the segmenter never heard of them: still 0 streams
            for ws in idle:
                await ws.close()
            await until(lambda: not front.live.sessions)
            kept: list[aiohttp.ClientWebSocketResponse] = []
            try:
                return await admitted(http, front, kept)
            finally:
                for ws in kept:
                    await ws.close()

    assert asyncio.run(run()) == 5  # (5 + 1) x 0.3 = 1.8 > 1.7


def test_sessions_another_front_admitted_since_the_report_count_at_once(tmp_path: Path) -> None:
    """Each front only knew its own sessions since the last report: two fronts admitting at the
    same time each filled the room the report left."""

    async def run() -> tuple[int, int]:
        async with fronts(tmp_path) as (a, b), aiohttp.ClientSession() as http:
            for front in (a, b):
                await front.report(load(0.3))
            kept: list[aiohttp.ClientWebSocketResponse] = []
            try:
                for _ in range(3):
                    ws = await knock(http, b)
                    assert ws is not None
                    kept.append(ws)
                return await admitted(http, a, kept), await admitted(http, b, kept)
            finally:
                for ws in kept:
                    await ws.close()

    assert asyncio.run(run()) == (2, 0)  # 3 on b, then 2 on a: 5 in all


def test_a_session_that_ended_makes_room_for_the_next_at_once(tmp_path: Path) -> None:
    """At a turnover the last report still counts the streams that just ended; the seats do
    not, so a newcomer who takes the place of one that left is let in (the soak's turnovers)."""

    async def run() -> tuple[int, bool]:
        async with fronts(tmp_path) as (front, _), aiohttp.ClientSession() as http:
            await front.report(load(0.3))
            kept: list[aiohttp.ClientWebSocketResponse] = []
            try:
                full = await admitted(http, front, kept)
                await front.report(load(0.3, streams=full))  # they all started
                await kept.pop().close()
                await until(lambda: len(front.live.sessions) == full - 1)
                again = await knock(http, front)
                if again is not None:
                    kept.append(again)
                return full, again is not None
            finally:
                for ws in kept:
                    await ws.close()

    assert asyncio.run(run()) == (5, True)
