"""Shards: several decoder-segmenter pipelines, each carrying its own fronts' sessions, sharing
the model actors (`[actors] shards`).

The topology in one place, a model actor serving two segmenters in the test's own process (the
rig), and a real group of two shards where one shard's death touches only its own sessions.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamer.actors.actor import Actor
from streamer.actors.host import SHARD_RESTARTS_MAX, InLoop, build, local_inboxes
from streamer.actors.model_actor import ModelActor
from streamer.actors.segmenter import Segmenter
from streamer.front.app import missing_roles
from streamer.runtime import config, group
from streamer.runtime.clock import FakeClock
from streamer.runtime.topology import Host, Place, Topology, segmenter_control
from streamer.transport import sockets
from streamer.transport.messages import (
    BUSY,
    GRANTED,
    NOWHERE,
    Close,
    Done,
    Exited,
    Feed,
    Forget,
    Frames,
    Infer,
    Open,
    Packet,
    Pass,
    Ready,
    Restore,
    Running,
    Want,
    encode,
)
from streamer.transport.shm import BufferPool
from streamer.transport.sockets import ZmqLink

from audio import noise, speech
from conversation import audio_frames, check_regions_answered, check_simple_counts, converse, start_msg, stream_steps
from rig import SMALL_POOLS, Rig
from server import SPLIT, Server, actor, wait_for

TWO = ("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.")


def topology(shards: int, fronts: int, placement: str = "split") -> Topology:
    return Topology(config.load(env={}, overrides={"actors": {"shards": shards, "fronts": fronts, "models": 2,
                                                              "placement": placement}, "pools": dict(SMALL_POOLS)}))


def test_one_shard_is_the_group_as_it_always_was() -> None:
    topo = topology(1, 2)
    assert [p.name for p in topo.places] == ["model-0", "model-1", "segmenter", "decoder", "front-0", "front-1"]
    assert topo.sends_to(Place("front", 1)) == ["decoder"]
    assert topo.sends_to(Place("model", 0)) == ["segmenter-ctl"]
    assert set(topo.pools) == {"front-0", "front-1", "decoder", "segmenter"}


def test_each_shard_has_its_own_stages_pools_and_inboxes_and_every_model_answers_each() -> None:
    topo = topology(2, 4)
    assert [p.name for p in topo.places] == ["model-0", "model-1", "segmenter", "decoder", "segmenter-1",
                                             "decoder-1", "front-0", "front-1", "front-2", "front-3"]
    assert [topo.shard_of(k) for k in range(4)] == [0, 1, 0, 1]
    assert topo.sends_to(Place("front", 3)) == ["decoder-1"]
    assert topo.sends_to(Place("decoder", 1)) == ["segmenter-1", "front-1", "front-3"]
    # Its own fronts' results, and every front's admission its load: the models are shared.
    assert topo.sends_to(Place("segmenter", 1)) == ["front-0", "front-1", "front-2", "front-3", "model-0", "model-1"]
    assert topo.sends_to(Place("model", 0)) == ["segmenter-ctl", "segmenter-ctl-1"]
    assert topo.inboxes(Place("segmenter", 1)) == ("segmenter-ctl-1", "segmenter-1")
    assert topo.reads(Place("decoder", 1)) == ("front-1", "front-3")
    assert topo.reads(Place("model", 0)) == ("segmenter", "segmenter-1")
    assert {"decoder-1", "segmenter-1"} <= set(topo.pools)
    assert set(topo.listeners()) >= {"decoder", "decoder-1", "segmenter-ctl", "segmenter-ctl-1"}


def test_more_shards_than_fronts_are_as_many_as_the_fronts() -> None:
    assert topology(4, 2).shards == 2


def test_paired_placement_pairs_each_shards_decoder_with_its_own_segmenter() -> None:
    topo = topology(2, 2, "paired")
    assert [h.name for h in topo.hosts] == ["model-0", "model-1", "decoder+segmenter", "decoder-1+segmenter-1",
                                            "front-0", "front-1"]
    second = Host((Place("decoder", 1), Place("segmenter", 1)))
    assert topo.bound(second) == ("decoder-1", "segmenter-ctl-1")
    assert topo.reclaimed_at_death(second) == ("front-1", "decoder-1")


def test_a_shard_process_is_a_front_with_its_decoder_and_segmenter_started_last() -> None:
    topo = topology(0, 2, "shards")
    assert topo.shards == 2  # one per front, whatever [actors] shards says
    assert [h.name for h in topo.hosts] == ["model-0", "model-1", "front-0+decoder+segmenter",
                                            "front-1+decoder-1+segmenter-1"]
    shard = topo.hosts[3]
    # The front's inbox is bound (other shards' load reports, the supervisor's notes) and handed to
    # (its own decoder's and segmenter's answers); the decoder's and the segmenter's are only handed to.
    assert topo.bound(shard) == ("front-1", "segmenter-ctl-1")
    assert set(local_inboxes(topo, shard, {}).queues) == {"front-1", "decoder-1", "segmenter-1"}
    assert "decoder" not in topo.listeners()  # a decoder hears of its front's death by dying with it


def test_metrics_ports_stay_where_they_were_and_the_other_shards_come_last() -> None:
    cfg = config.load(env={}, overrides={"actors": {"shards": 2, "fronts": 2, "models": 2},
                                         "metrics": {"base_port": 9100}})
    topo = Topology(cfg)
    ports = {p.name: topo.metrics_port(p) for p in topo.places}
    assert (ports["decoder"], ports["segmenter"], ports["front-0"], ports["model-1"]) == (9101, 9102, 9103, 9106)
    assert (ports["decoder-1"], ports["segmenter-1"]) == (9107, 9108)


# -- a model actor serving two shards ---------------------------------------------------------------


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(ModelActor, Place("model", 0), fronts=2, actors={"shards": 2},
            model={"fake": {"constant_factor": 0.0, "final_every_s": 1.0}})
    try:
        yield r
    finally:
        r.close()


def infer(work_id: int, front: int) -> Infer:
    return Infer(work_id=work_id, stream=f"s-{front}", front=front, channel=0, seq=0, events_before=0,
                 start_time=0.0, end_time=0.5, is_final=True)


def test_a_model_announces_itself_to_every_shard_and_answers_each_on_its_own_inbox(rig: Rig) -> None:
    rig.turn()
    assert [len(rig.sent(segmenter_control(k), Ready)) for k in (0, 1)] == [1, 1]
    rig.put("model-0", infer(7, front=1), audio=[noise(0.5)], pool="segmenter-1")
    rig.turn()
    (done,) = rig.sent("segmenter-ctl-1", Done)
    assert done.work_ids == [7] and rig.sent("segmenter-ctl", Done) == []
    rig.put("model-0", infer(7, front=0), audio=[noise(0.5)], pool="segmenter")
    rig.turn()
    (done,) = rig.sent("segmenter-ctl", Done)
    assert done.work_ids == [7] and rig.sent("segmenter-ctl-1", Done) == []


def held_streams(rig: Rig) -> set[str]:
    streams = rig.actor.streams  # type: ignore[attr-defined]
    return set(streams.held)


def test_a_new_segmenter_of_one_shard_forgets_only_that_shards_streams_and_work(rig: Rig) -> None:
    """Each shard's segmenter numbers its own work and dies on its own: the `Forget` of shard 1's
    new segmenter drops shard 1's sequential states and its predecessor's queued work, and
    leaves shard 0's alone, numbers and all."""
    for front in (0, 1):
        rig.put("model-0", Restore(work_id=10, stream=f"s-{front}", front=front, channel=0, channels=1, sample=0,
                                   finals=0))
    rig.turn(2)
    assert held_streams(rig) == {"s-0", "s-1"}
    rig.put("model-0", Forget(100, shard=1))
    rig.turn()
    assert held_streams(rig) == {"s-0"}
    rig.sent("segmenter-ctl")
    rig.sent("segmenter-ctl-1")
    x = noise(0.5)
    for front, pool in ((0, "segmenter"), (1, "segmenter-1")):
        rig.put("model-0", Feed(work_id=11, stream=f"s-{front}", front=front, channel=0, channels=1, start=0,
                                end=8000, interim=False), audio=[x], pool=pool)
        rig.turn()
    assert [d.work_ids for d in rig.sent("segmenter-ctl", Done)] == [[11]]  # shard 0's numbers still count
    assert rig.sent("segmenter-ctl-1", Done) == []  # below shard 1's new segmenter's first: skipped


# -- two shards' segmenters sharing two model actors ---------------------------------------------------


def segmenters() -> list[Rig]:
    return [Rig(Segmenter, Place("segmenter", k), fronts=2, models=2, actors={"shards": 2}) for k in (0, 1)]


def chunk(rig: Rig, k: int, stream: str = "") -> None:
    """Shard k's front k streams 0.5 s on the simple route: one chunk, one final `Infer`."""
    inbox = Place("segmenter", k).name
    stream = stream or f"s-{k}"
    rig.put(inbox, Open(stream, k, "simple", 1, 16000, 16, False, False))  # type: ignore[arg-type]
    x = noise(0.5, seed=k)
    rig.put(inbox, Frames(stream, 1, x.shape[0], NOWHERE), audio=[x], pool=Place("decoder", k).name)
    rig.put(inbox, Close(stream))
    rig.turn(2)


def handed(rig: Rig, model: int) -> list[Infer]:
    return [i for p in rig.packets(f"model-{model}") for i in p.items if isinstance(i, Infer)]


def announce(rig: Rig, k: int, *models: int) -> None:
    for m in models:
        rig.put(segmenter_control(k), Ready(m, 100 + m, 1, 8))
    rig.turn()


def test_each_shards_first_choice_among_idle_model_actors_is_a_different_one() -> None:
    """Ties among idle actors went to model-0 in every shard: each shard's first packet then
    queued behind the other's call while model-1 idled."""
    rigs = segmenters()
    try:
        for k, r in enumerate(rigs):
            announce(r, k, 0, 1)
            chunk(r, k)
        assert [[m for m in (0, 1) if handed(r, m)] for r in rigs] == [[0], [1]]
    finally:
        for r in rigs:
            r.close()


def test_a_model_serving_two_shards_gives_its_turns_to_the_shards_that_ask(rig: Rig) -> None:
    """Shard 1's packet, then shard 0's, wait at the actor. Shard 1's call: both hear it begin,
    shard 1 its `Done`; shard 0's packet waits, so shard 1 hears `BUSY` (its `Done` would free
    the actor for it). Shard 0's call: nothing waits after it and nobody asked: only its `Done`.
    Then shard 1 asks (`Want`): the turn is its own, and shard 0, which counted the actor free,
    hears `BUSY`. Shard 1 passes: the actor is free and nobody has asked: nothing is said."""
    rig.turn()
    rig.put("model-0", infer(3, front=1), audio=[noise(0.5)], pool="segmenter-1")
    rig.put("model-0", infer(4, front=0), audio=[noise(0.5)], pool="segmenter")

    def told(k: int) -> list[Any]:
        return [i.shard if isinstance(i, Running) else i.work_ids for i in rig.sent(segmenter_control(k))
                if isinstance(i, Running | Done)]

    rig.turn()
    assert (told(0), told(1)) == ([1], [1, [3], BUSY])
    rig.turn()
    assert (told(0), told(1)) == ([0, [4]], [0])
    rig.put("model-0", Want(1))
    rig.turn()
    assert (told(0), told(1)) == ([BUSY], [GRANTED])
    rig.put("model-0", Pass(1))
    rig.turn()
    assert (told(0), told(1)) == ([], [])


def test_a_shard_sends_a_final_only_to_an_actor_that_is_its_own_and_asks_the_others_for_a_turn() -> None:
    """Each shard's credit covers its own packets only: told that model-0 runs shard 1's call,
    shard 0 gives its final to model-1, though model-0 comes first in its order; told that both
    run shard 1's calls, it keeps its next final and asks both for a turn, once, and gives the
    final to the first that grants one. The other's turn, granted later, it passes on."""
    (r, _) = rigs = segmenters()
    try:
        announce(r, 0, 0, 1)
        r.put(segmenter_control(0), Running(0, 100, 1))
        r.turn()
        chunk(r, 0)
        assert [len(handed(r, m)) for m in (0, 1)] == [0, 1]
        r.put(segmenter_control(0), Running(1, 101, 1))
        r.turn()
        chunk(r, 0, "s-0b")
        r.turn()

        def said(m: int) -> list[Any]:
            return [i for p in r.packets(f"model-{m}") for i in p.items]

        assert (said(0), said(1)) == ([Want(0)], [Want(0)])  # both busy elsewhere: the final waits here
        r.put(segmenter_control(0), Running(0, 100, GRANTED))
        r.turn()
        assert [type(i) for i in said(0)] == [Infer] and said(1) == []
        r.put(segmenter_control(0), Running(1, 101, GRANTED))
        r.turn()
        assert said(1) == [Pass(0)]
    finally:
        for x in rigs:
            x.close()


@pytest.mark.parametrize("said", [True, False])
def test_a_model_that_dies_holding_two_shards_packets_charges_only_the_one_it_was_running(said: bool) -> None:
    """A model actor holds a packet of each shard; it says which shard's call it begins
    (`Running`). When it dies, only that shard's items spend an attempt; the other shard's were
    queued. Not told (a crash before the word went out), each shard charges its own oldest, as
    with one shard: never fewer attempts than calls that ran."""
    rigs = segmenters()
    try:
        for k, r in enumerate(rigs):
            announce(r, k, 0)
            chunk(r, k)
            assert handed(r, 0)
        for k, r in enumerate(rigs):
            if said:
                r.put(segmenter_control(k), Running(0, 100, 0))
            r.put(segmenter_control(k), Ready(1, 101, 1, 8), Exited("model", 0, 100, "signal SIGKILL"))
            r.turn()
        assert [[w.attempt for w in handed(r, 1)] for r in rigs] == ([[2], [1]] if said else [[2], [2]])
    finally:
        for r in rigs:
            r.close()


@pytest.mark.parametrize("last", [BUSY, GRANTED])
def test_a_turn_word_as_the_last_before_a_death_still_charges_our_oldest_packet(last: int) -> None:
    """`BUSY` and `GRANTED` are said between calls: the call that ran after them may have been
    ours, its `Running` lost in the crash. Found by a hostile review: `BUSY` counted as "another
    shard's", so a poison item would go round the actors for ever without spending an attempt.
    Here shard 0 holds two packets at model-0 (a credit of two); the first is answered and the
    actor says `BUSY` (the second waits); it dies: the second spends an attempt."""
    (r, _) = rigs = segmenters()
    try:
        r.put(segmenter_control(0), Ready(0, 100, 2, 8))
        r.turn()
        chunk(r, 0, "a")
        chunk(r, 0, "b")
        first, _second = handed(r, 0)
        r.put(segmenter_control(0), Running(0, 100, 0), Done(0, 100, [first.work_id], 0.0), Running(0, 100, last))
        r.turn()
        r.put(segmenter_control(0), Ready(1, 101, 1, 8), Exited("model", 0, 100, "signal SIGSEGV"))
        r.turn()
        assert [w.attempt for w in handed(r, 1)] == [2]
    finally:
        for x in rigs:
            x.close()


def test_a_model_serving_two_shards_says_which_shards_call_it_begins(rig: Rig) -> None:
    """Shard 1's call: both shards hear it begin; shard 1 hears its `Done`; nobody asked for a
    turn, so nothing more is said (a lightly loaded group pays one word a call)."""
    rig.turn()
    rig.put("model-0", infer(3, front=1), audio=[noise(0.5)], pool="segmenter-1")
    rig.turn()
    pid = rig.actor.pid  # type: ignore[attr-defined]
    told = [[i for i in rig.sent(segmenter_control(k)) if isinstance(i, Running | Done)] for k in (0, 1)]
    assert told[0] == [Running(0, pid, 1)]
    assert told[1][0] == Running(0, pid, 1) and [type(i) for i in told[1]] == [Running, Done]


# -- a real group of two shards ------------------------------------------------------------------------


# Admission is not what these tests are about: a slow model must not turn their sessions away.
NO_ADMISSION = {"STREAMER_ADMISSION_MAX_BUSY": "1000", "STREAMER_ADMISSION_MAX_QUEUE_DELAY_S": "1000"}


def two_shards(tmp_path: Path, **env: str) -> Server:
    """Two shards of split processes (`[actors] shards` means nothing to placement "shards", where
    a shard is a front's process and its decoder's death is its front's)."""
    return Server(tmp_path / "run", env={**SPLIT, "STREAMER_ACTORS_SHARDS": "2", "STREAMER_ACTORS_FRONTS": "2",
                                         **NO_ADMISSION, **env}).start()


async def on_both_fronts(srv: Server, client: Callable[[], Awaitable[Any]]) -> list[asyncio.Task[Any]]:
    """Start `client()`s until each front has a session (the kernel spreads connections over the
    fronts, SO_REUSEPORT, whichever way they fall); the running clients."""
    def opened(front: str) -> float:
        return srv.metric(front, "streamer_front_sessions_total")

    clients: list[asyncio.Task[Any]] = []
    while not (opened("front-0") and opened("front-1")):
        assert len(clients) < 40, "every session landed on one front"
        clients.append(asyncio.create_task(client()))
        await asyncio.to_thread(wait_for, lambda: clients[-1].done() or opened("front-0") + opened("front-1")
                                >= len(clients), 20)
        if clients[-1].done():
            clients[-1].result()  # it failed before its handshake counted: say why
    return clients


def simple(seconds: float) -> list[Any]:
    return stream_steps(noise(seconds)[None, :], 16000, False)


async def many(srv: Server, n: int, seconds: float) -> list[Any]:
    return list(await asyncio.gather(*(converse(srv.ws("simple"), simple(seconds)) for _ in range(n))))


def test_two_shards_answer_every_sample_whichever_front_a_session_lands_on(tmp_path: Path) -> None:
    srv = two_shards(tmp_path)
    try:
        async def sessions() -> list[Any]:
            clients = await on_both_fronts(srv, lambda: converse(srv.ws("simple"), simple(2.0), pace_s=0.05))
            return list(await asyncio.gather(*clients))

        outcomes = asyncio.run(sessions())
        for t in outcomes:
            assert t.close_code == 1000, t.messages[-3:]
            check_simple_counts(t, 0, 32000)

        def decoded() -> dict[str, float]:  # as of each decoder's last heartbeat
            return {name: srv.metric(name, "streamer_stage_audio_seconds_total", stage="decoder")
                    for name in ("decoder", "decoder-1")}

        wait_for(lambda: sum(decoded().values()) >= 2.0 * len(outcomes) - 1e-6, 10)
        assert sum(decoded().values()) == pytest.approx(2.0 * len(outcomes)), decoded()
        assert min(decoded().values()) > 0, decoded()  # both shards carried sessions
    finally:
        srv.stop()


def test_a_shards_decoder_dying_replays_only_its_own_fronts_sessions(tmp_path: Path) -> None:
    srv = two_shards(tmp_path, STREAMER_MODEL_FAKE_MODE="sleep", STREAMER_MODEL_FAKE_DELAY="0.3")
    try:
        async def kill_while_streaming() -> list[Any]:
            # Paced: each session streams for 20 s, long after the kill below.
            clients = await on_both_fronts(srv, lambda: converse(srv.ws("simple"), simple(20.0), timeout=90,
                                                                  pace_s=0.1))
            # A session counts from its handshake; its stream, from its `start`: wait until the
            # decoder holds one (its heartbeat says so), so there is a stream to replay.
            await asyncio.to_thread(wait_for, lambda: actor(srv, "decoder-1").get("inflight", 0) >= 1, 20)
            os.kill(actor(srv, "decoder-1")["pid"], signal.SIGKILL)
            return list(await asyncio.gather(*clients))

        for t in asyncio.run(kill_while_streaming()):
            assert t.close_code == 1000, t.messages[-3:]
            check_simple_counts(t, 0, 320000)
        replays = [line for line in srv.log().splitlines() if "replaying" in line and "open streams" in line]
        assert replays and all("front-1" in line for line in replays), replays
    finally:
        srv.stop()


def member(name: str, state: str, process: str | None = None) -> group.Member:
    role, _, index = name.partition("-")
    return group.Member(role, int(index or 0), name, 1, state, 0, 1.0, None, None, process=process)


def test_health_names_a_shards_stage_that_is_down_unless_it_is_a_front_restarting() -> None:
    """Split into shards, front-1's sessions need decoder-1: health says so while it restarts.
    In a shard's process it is front-1 itself restarting, and the other fronts take the new
    sessions, as when a front of its own restarts: every front would otherwise answer 503 and a
    balancer take the whole instance out for one front's crash."""
    up = [member(n, "running") for n in ("front-0", "front-1", "decoder", "segmenter", "model-0")]
    split = group.Group("r", 1, None, [*up, member("decoder-1", "restarting"), member("segmenter-1", "running")])
    assert missing_roles(split) == ["decoder-1"]
    process = "front-1+decoder-1+segmenter-1"
    shards = group.Group("r", 1, None, [*up, member("decoder-1", "restarting", process),
                                        member("segmenter-1", "restarting", process)])
    assert missing_roles(shards) == []


# -- a shard's actors turned by an event loop, in the test's process ----------------------------------------


class LoopShard:
    """Shard 0's decoder and segmenter on a real ZeroMQ link (its inboxes bound in a run directory
    of the test's) and the run's real pools, turned by `InLoop` in an asyncio loop; a PUSH socket
    plays the model actors writing to the segmenter's control inbox."""

    def __init__(self, run_dir: Path) -> None:
        self.clock = FakeClock()
        cfg = config.load(env={}, overrides={"actors": {"fronts": 2, "models": 2, "placement": "shards"},
                                             "pools": dict(SMALL_POOLS)})
        self.topo = Topology(cfg)
        self.run_id = secrets.token_hex(4)
        self.pools = {n: BufferPool.create(spec, self.run_id) for n, spec in self.topo.pools.items()}
        host = self.topo.hosts[2]
        self.wire = ZmqLink(str(run_dir), ("segmenter-ctl",), self.topo.immediate, peers=())
        try:
            self.hosted = build(self.topo, host, cfg, self.wire, self.pools, clock=self.clock)
        except BaseException:  # the fixture never yields: nothing else would unlink the pools
            self.wire.close()
            for pool in self.pools.values():
                pool.close()
                pool.unlink()
            raise
        self.decoder, self.segmenter = self.hosted.actors
        self.zctx: zmq.Context[sockets.Socket] = zmq.Context()
        self.models = sockets.outbox(self.zctx, str(run_dir), "segmenter-ctl")

    def close(self) -> None:
        self.zctx.destroy(linger=0)
        self.wire.close()
        for pool in self.pools.values():
            pool.close()
            pool.unlink()


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[LoopShard]:
    s = LoopShard(tmp_path)
    try:
        yield s
    finally:
        s.close()


def exit_code(shard: LoopShard, restarted: Callable[[Actor], None] = lambda actor: None,
              after: Callable[[], None] = lambda: None) -> object:
    """Turn the shard in an event loop (with these hooks of the front's) until its process would
    end; the exit code it would end with."""
    async def run() -> None:
        turning = InLoop(shard.hosted, shard.wire, asyncio.get_running_loop())
        turning.restarted, turning.after = restarted, after
        turning.start()
        await asyncio.sleep(5)

    with pytest.raises(SystemExit) as ended:
        asyncio.run(run())
    return ended.value.code


def test_a_burst_on_a_socket_is_read_whole_without_waiting_for_a_timer(shard: LoopShard,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's readers fire once for a burst (ZeroMQ's descriptor is edge-triggered) and a turn
    takes at most `turn_limit` packets: what is left is read by the next turns at once, not at the
    actors' next timer. (The timers are put a minute away, so a loaded machine cannot make one
    fire first: a loop that waited for them misses the deadline below.)"""
    for name in ("streamer.actors.actor.POLL_S", "streamer.actors.actor.REST_POLL_S", "streamer.actors.host.POLL_S"):
        monkeypatch.setattr(name, 60.0)
    burst = 3 * Actor.turn_limit + 5

    async def run() -> InLoop:
        turning = InLoop(shard.hosted, shard.wire, asyncio.get_running_loop())
        turning.start()
        await asyncio.sleep(0)  # the first turn
        for pid in range(1000, 1000 + burst):
            assert sockets.try_send(shard.models, encode(Packet(None, [Ready(0, pid, 1, 8)])))
        deadline = time.monotonic() + 5
        while shard.segmenter.dispatcher.peers[0].pid != 1000 + burst - 1:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the burst was not read"
            await asyncio.sleep(0.001)  # (the loop turns meanwhile: this is the test's own wait)
        turning.stop()
        return turning

    turning = asyncio.run(run())
    assert turning.timed == 0  # every turn was woken by the socket or by the turn before


def test_an_actor_that_raises_outside_any_stream_is_replaced_in_the_shard(shard: LoopShard) -> None:
    """Left to asyncio, an exception in a turn would be logged and the shard would go on half
    turned. The actor that raised is replaced in the process (a new one, with nothing of the old
    one's input), the front is told so it plays its streams again, and the new one serves: it
    greets the model actors that announce themselves, as a new process would."""
    old = shard.segmenter

    def broken() -> None:
        raise RuntimeError("a bug outside any stream")

    old.on_idle = broken  # type: ignore[method-assign]
    told: list[Actor] = []

    async def run() -> InLoop:
        turning = InLoop(shard.hosted, shard.wire, asyncio.get_running_loop())
        turning.restarted = told.append
        turning.start()
        deadline = time.monotonic() + 5
        while not told:
            assert time.monotonic() < deadline, "the actor was not replaced"
            await asyncio.sleep(0.001)
        assert sockets.try_send(shard.models, encode(Packet(None, [Ready(0, 4242, 1, 8)])))
        while shard.hosted.actors[1].dispatcher.peers[0].pid != 4242:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the new segmenter did not read its inbox"
            await asyncio.sleep(0.001)
        turning.stop()
        return turning

    turning = asyncio.run(run())
    fresh = shard.hosted.actors[1]
    assert told == [fresh] and fresh is not old and isinstance(fresh, Segmenter)
    assert shard.hosted.actors[0] is shard.decoder  # its neighbour was left alone
    assert len(turning.replaced) == 1


def test_an_actor_that_raises_again_and_again_ends_the_shards_process(shard: LoopShard,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that comes back at once in every new actor is not the shard's to retry forever: past
    the restart intensity the process ends, and the supervisor (with its own) restarts it."""
    def broken(self: Segmenter) -> None:
        raise RuntimeError("a bug outside any stream, in every incarnation")

    monkeypatch.setattr(Segmenter, "on_idle", broken)
    told: list[Actor] = []
    assert exit_code(shard, restarted=told.append) == 70
    assert len(told) == SHARD_RESTARTS_MAX


def test_replacements_spread_wider_than_the_restart_period_are_not_counted_together(
        shard: LoopShard, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intensity counts replacements within `SHARD_RESTARTS_WITHIN_S`: one every 11 s goes on
    for ever (three at most fall in any 30 s); the test stops it after eight."""
    def broken(self: Segmenter) -> None:
        raise RuntimeError("a bug that comes back now and then")

    monkeypatch.setattr(Segmenter, "on_idle", broken)
    told: list[Actor] = []

    def replaced(actor: Actor) -> None:
        told.append(actor)
        shard.clock.advance(11.0)
        if len(told) == 8:
            monkeypatch.undo()  # fixed: the next segmenter idles as it should

    async def run() -> None:
        turning = InLoop(shard.hosted, shard.wire, asyncio.get_running_loop())
        turning.restarted = replaced
        turning.start()
        deadline = time.monotonic() + 5
        while len(told) < 8:
            assert time.monotonic() < deadline, told
            await asyncio.sleep(0.001)
        turning.stop()

    asyncio.run(run())
    assert len(told) == 8 and len(set(map(id, told))) == 8


def test_a_replay_that_fails_ends_the_shards_process(shard: LoopShard) -> None:
    """If the front cannot play its streams again (or the replacement itself fails), some streams
    would wait for results that never come: the process ends instead, for the supervisor."""
    def broken() -> None:
        raise RuntimeError("a bug outside any stream")

    shard.segmenter.on_idle = broken  # type: ignore[method-assign]

    def replay(actor: Actor) -> None:
        raise RuntimeError("a session's replay raised")

    assert exit_code(shard, restarted=replay) == 70


def test_a_replacement_segmenter_does_not_believe_a_dead_models_queued_ready(shard: LoopShard) -> None:
    """The new segmenter reads the old one's control inbox: a `Ready` queued there by a model
    process that has died since (the old segmenter heard of it) must not make it a peer, as it
    would not for a new process, whose inbox starts empty."""
    def until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not done():
            assert time.monotonic() < deadline
            shard.hosted.turn(0.01)

    old = shard.segmenter
    assert sockets.try_send(shard.models, encode(Packet(None, [Exited("model", 0, 1000, "killed by SIGKILL")])))
    until(lambda: 1000 in old.dispatcher._dead)  # type: ignore[attr-defined]
    assert sockets.try_send(shard.models, encode(Packet(None, [Ready(0, 1000, 1, 8), Ready(1, 2000, 1, 8)])))
    fresh = shard.hosted.replace(old)
    until(lambda: fresh.dispatcher.peers[1].pid == 2000)  # type: ignore[attr-defined]
    assert fresh.dispatcher.peers[0].pid == 0  # type: ignore[attr-defined]


def test_a_front_that_raises_in_its_shards_turn_ends_the_process(shard: LoopShard) -> None:
    """The front holds the sessions: it cannot be replaced under them. The process ends."""
    def broken() -> None:
        raise RuntimeError("a bug in the front's side of the turn")

    assert exit_code(shard, after=broken) == 70


# -- a shard per process: the front with its decoder and segmenter in one event loop ---------------------


def shard_processes(tmp_path: Path, **env: str) -> Server:
    return Server(tmp_path / "run", env={"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_ACTORS_FRONTS": "2",
                                         **NO_ADMISSION, **env}).start()


def test_a_shard_per_process_answers_every_route(tmp_path: Path) -> None:
    srv = shard_processes(tmp_path)
    try:
        rows = {a["name"]: a for a in srv.actors()}
        assert rows["front-1"]["pid"] == rows["decoder-1"]["pid"] == rows["segmenter-1"]["pid"]
        for t in asyncio.run(many(srv, 6, 2.0)):
            assert t.close_code == 1000, t.messages[-3:]
            check_simple_counts(t, 0, 32000)
        s = speech(TWO)
        t = asyncio.run(converse(srv.ws(), stream_steps(s.samples[None, :], 16000, False)))
        assert check_regions_answered(t, 0) == (2, 0)
        t = asyncio.run(converse(srv.ws("sequential"), simple(2.0)))
        assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
        totals = [m["total"] for m in t.of_type("segment") if m["is_final"]]
        assert totals and totals == sorted(totals) and totals[-1] == 32000, totals
    finally:
        srv.stop()


@pytest.mark.parametrize("role", ["decoder", "segmenter"])
def test_a_shards_actor_that_raises_is_replaced_and_no_session_notices(tmp_path: Path, role: str) -> None:
    """An error no `contain` takes, in one shard's decoder or segmenter while both shards carry
    live speech: that actor alone is replaced in its process, its front plays its streams again,
    and every session on both shards ends 1000 with each region answered once. No process died."""
    trigger = tmp_path / "raise-now"
    s = speech(TWO)
    srv = shard_processes(tmp_path, STREAMER_TEST_RAISE=f"{role}:{trigger}",
                          PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent / "faults"),
                                                                   os.environ.get("PYTHONPATH")])))
    try:
        pids = {a["name"]: a["pid"] for a in srv.actors()}

        def replaced() -> float:
            return sum(srv.metric(f, "streamer_shard_restarts_total", stage=role) for f in ("front-0", "front-1"))

        async def raise_while_streaming() -> list[Any]:
            clients = await on_both_fronts(srv, lambda: converse(
                srv.ws(), stream_steps(s.samples[None, :], 16000, False), timeout=60, pace_s=0.1))
            # Each shard's decoder holds a stream (its heartbeat says so): whichever raises has one to replay.
            await asyncio.to_thread(wait_for, lambda: min(actor(srv, d).get("inflight", 0)
                                                          for d in ("decoder", "decoder-1")) >= 1, 20)
            trigger.touch()
            await asyncio.to_thread(wait_for, lambda: replaced() == 1, 20)
            return list(await asyncio.gather(*clients))

        for t in asyncio.run(raise_while_streaming()):
            assert check_regions_answered(t, 0) == (2, 0), t.messages[-3:]
        assert not trigger.exists()
        assert {a["name"]: a["pid"] for a in srv.actors()} == pids  # no process was restarted
        said = [line for line in srv.log().splitlines() if f"the {role} raised and was replaced: replaying" in line]
        assert len(said) == 1 and " 0 open streams" not in said[0], said
    finally:
        srv.stop()


def test_a_shard_killed_drops_only_its_own_sessions_and_comes_back(tmp_path: Path) -> None:
    """SIGKILL of one shard's process: its sessions end 1006 at once (their clients reconnect, as
    after a front's death); the other shard's sessions finish whole; the shard is restarted."""
    srv = shard_processes(tmp_path, STREAMER_MODEL_FAKE_MODE="sleep", STREAMER_MODEL_FAKE_DELAY="0.3")
    try:
        victim = actor(srv, "front-1")["pid"]

        async def kill_while_streaming() -> list[Any]:
            clients = await on_both_fronts(srv, lambda: converse(srv.ws("simple"), simple(6.0), timeout=60,
                                                                  pace_s=0.05))
            os.kill(victim, signal.SIGKILL)
            return list(await asyncio.gather(*clients))

        outcomes = asyncio.run(kill_while_streaming())
        dropped = [t for t in outcomes if t.close_code == 1006]
        whole = [t for t in outcomes if t.close_code == 1000]
        assert dropped and whole and len(dropped) + len(whole) == len(outcomes), [t.close_code for t in outcomes]
        for t in whole:
            check_simple_counts(t, 0, 96000)
        wait_for(lambda: actor(srv, "front-1")["pid"] not in (None, victim)
                 and actor(srv, "segmenter-1")["state"] == "running", 20)
        for t in asyncio.run(many(srv, 4, 1.0)):
            assert t.close_code == 1000, t.messages[-3:]
            check_simple_counts(t, 0, 16000)
    finally:
        srv.stop()


def live(seconds: float) -> list[Any]:
    """A simple-route stream in 20 ms frames, to be sent one every 20 ms (`pace_s`): a live client."""
    return [start_msg(1, 16000, False), *audio_frames(noise(seconds)[None, :], False, chunk_s=0.02),
            {"request": "stop", "disconnect": True}]


def test_a_busy_fronts_sockets_are_held_and_gather_the_frames_sent_meanwhile_losing_none(tmp_path: Path) -> None:
    """`[front] read_hold_ms`: while a front has `read_hold_sessions` sessions, it leaves a live
    client's socket unread for that long after each audio frame, so a client streaming 20 ms
    frames in real time reaches the pipeline several frames at a time (one read, one message),
    and every sample is still answered. Below that, every frame is read as it comes, and so is
    a file uploaded faster than real time (its reads gather many frames by themselves)."""
    srv = Server(tmp_path / "run", env={"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_ACTORS_FRONTS": "1",
                                        "STREAMER_FRONT_READ_HOLD_MS": "100",
                                        "STREAMER_FRONT_READ_HOLD_SESSIONS": "2",
                                        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0"}).start()
    try:
        def counts() -> tuple[float, ...]:
            return tuple(srv.metric("front-0", f"streamer_front_{name}_total")
                         for name in ("audio_frames", "audio_feeds", "read_holds"))

        def since(before: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(b - a for a, b in zip(before, counts(), strict=True))

        alone = asyncio.run(converse(srv.ws("simple"), live(2.0), pace_s=0.02))
        assert alone.close_code == 1000, alone.messages[-3:]
        check_simple_counts(alone, 0, 32000)
        assert counts()[0] == 100 and counts()[2] == 0  # one session: below the threshold, never held

        async def two(steps: list[Any], pace_s: float) -> None:
            for t in await asyncio.gather(*(converse(srv.ws("simple"), steps, pace_s=pace_s) for _ in range(2))):
                assert t.close_code == 1000, t.messages[-3:]
                check_simple_counts(t, 0, 16000 * sum(len(s) for s in steps if isinstance(s, bytes)) // 32000)

        before = counts()
        asyncio.run(two(live(2.0), 0.02))
        frames, feeds, holds = since(before)
        assert frames == 2 * 100 and holds > 0
        assert frames >= 2.5 * feeds, (frames, feeds)  # 100 ms holds of 20 ms frames: ~5 a feed

        before = counts()
        asyncio.run(two(live(20.0), 0.0))  # as fast as they can: not held past their first second
        frames, feeds, holds = since(before)
        assert frames == 2 * 1000 and holds <= 2 * 2, holds  # (held after every read: ~10 each, a 64 KiB buffer a hold)
    finally:
        srv.stop()
