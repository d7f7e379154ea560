"""Placement: the decoder and the segmenter in one process (`[actors] placement = "paired"`).

In the test's own process, as `rig.py` does for one actor: both actors on one `Hosted` loop over a
`MemoryLink` (the process's wire) and the run's real pools. What goes in is what fronts and model
actors would send; what comes out must be what two processes would have sent, with the decoder's
packets to the segmenter handed over in memory (no pool, no socket) in the same turn.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import prometheus_client
import pytest
import zmq

from streamer.actors.actor import Actor, Env
from streamer.actors.decoder import Decoder
from streamer.actors.host import Hosted, build
from streamer.actors.segmenter import Segmenter
from streamer.front.app import StageDeaths
from streamer.runtime import config
from streamer.runtime.clock import FakeClock
from streamer.runtime.topology import SEGMENTER_CONTROL, Host, Place, Topology
from streamer.supervisor.children import Child
from streamer.supervisor.supervisor import Supervisor
from streamer.transport import sockets
from streamer.transport.link import MemoryLink
from streamer.transport.messages import (
    NOWHERE,
    Close,
    Exited,
    Failed,
    Frames,
    Message,
    Open,
    Pcm,
    Ready,
    decode,
)
from streamer.transport.outbox import pack
from streamer.transport.shm import BufferPool

from audio import have_tools, noise, pcm_bytes, speech
from rig import SMALL_POOLS

TWO = ("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.")
PAIRED = Host((Place("decoder"), Place("segmenter")))


def configured(placement: str = "paired", **sections: dict[str, Any]) -> config.Config:
    tree: dict[str, Any] = {"actors": {"fronts": 2, "models": 2, "placement": placement}, "pools": dict(SMALL_POOLS)}
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return config.load(env={}, overrides=tree)


class Run:
    """Fresh pools and a wire, and either both actors on one `Hosted` loop ("paired") or each on
    its own link with the decoder's packets carried to the segmenter by hand ("split")."""

    def __init__(self, placement: str) -> None:
        self.cfg = configured(placement)
        self.topology = Topology(self.cfg)
        self.run_id = secrets.token_hex(4)
        self.pools = {n: BufferPool.create(spec, self.run_id) for n, spec in self.topology.pools.items()}
        self.clock = FakeClock()
        self.wire = MemoryLink()
        self.hosted: Hosted | None = None
        if placement == "paired":
            self.hosted = build(self.topology, PAIRED, self.cfg, self.wire, self.pools, self.clock)
            self.decoder, self.segmenter = self.hosted.actors
        else:
            self.seg_wire = MemoryLink()
            self.decoder = Decoder(Env(Place("decoder"), self.cfg, self.wire, self.pools, self.clock))
            self.segmenter = Segmenter(Env(Place("segmenter"), self.cfg, self.seg_wire, self.pools, self.clock))

    def put(self, inbox: str, *items: Message, audio: list[Any] | None = None, pool: str | None = None) -> None:
        payloads = [(i, a) for i, a in enumerate(audio or []) if a is not None]
        packed = pack(self.pools[pool] if pool else None, list(items), payloads)
        assert packed is not None
        (self.wire if self.hosted or inbox != SEGMENTER_CONTROL else self.seg_wire).inboxes[inbox].append(packed[0])

    def turn(self) -> None:
        if self.hosted is not None:
            self.hosted.turn(0)
            return
        self.decoder.turn(0)
        for raw in self.wire.sent.pop("segmenter", []):
            self.seg_wire.inboxes["segmenter"].append(raw)
        self.segmenter.turn(0)

    def out(self, dest: str) -> list[Message]:
        """Everything sent to `dest` (another process) so far, as items, with audio read out."""
        items = []
        for wire in (self.wire, getattr(self, "seg_wire", None)):
            if wire is None:
                continue
            for raw in wire.sent.pop(dest, []):
                items.extend(decode(raw).items)
        return items

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
            pool.unlink()


@pytest.fixture
def run() -> Iterator[Run]:
    r = Run("paired")
    try:
        yield r
    finally:
        r.close()


def opened(stream: str = "s-1", front: int = 0, rate: int = 48000, route: str = "segmented") -> Open:
    return Open(stream, front, route, 1, rate, 16, False, False)  # type: ignore[arg-type]


def feed(r: Run, x: np.ndarray, stream: str = "s-1", rate: int = 48000, step_s: float = 0.06,
         route: str = "segmented") -> None:
    """A stream as a front sends it: Open, 60 ms of client bytes a packet and a turn, Close."""
    r.put("decoder", opened(stream, rate=rate, route=route))
    data = pcm_bytes(x[None, :], False)
    step = int(step_s * rate) * 2
    for i in range(0, len(data), step):
        r.put("decoder", Pcm(stream, NOWHERE), audio=[data[i : i + step]], pool="front-0")
        r.turn()
    r.put("decoder", Close(stream))
    r.turn()


# -- where the actors run ------------------------------------------------------------------------


def test_split_gives_every_actor_its_own_process() -> None:
    topo = Topology(configured("split"))
    assert [h.places for h in topo.hosts] == [(p,) for p in topo.places]


def test_paired_puts_the_decoder_and_the_segmenter_in_one_process_started_where_the_segmenter_was() -> None:
    topo = Topology(configured("paired"))
    assert [h.name for h in topo.hosts] == ["model-0", "model-1", "decoder+segmenter", "front-0", "front-1"]
    assert topo.local(Place("decoder"), "segmenter") and not topo.local(Place("segmenter"), "front-0")
    assert not topo.local(Place("front", 0), "decoder")
    # Fronts send to the decoder, models and the supervisor to the segmenter's control: bound. The
    # segmenter's data inbox is the decoder's alone: a queue in memory, never a socket.
    assert topo.bound(PAIRED) == ("decoder", SEGMENTER_CONTROL)
    assert "segmenter" not in topo.peers(PAIRED)
    assert set(topo.reclaimed_at_death(PAIRED)) == {"front-0", "front-1", "decoder"}


def test_the_placement_is_read_from_the_environment_and_checked() -> None:
    assert config.load(env={"STREAMER_ACTORS_PLACEMENT": "paired"}).actors.placement == "paired"
    with pytest.raises(Exception, match="placement"):
        config.load(env={"STREAMER_ACTORS_PLACEMENT": "everywhere"})


# -- the hand-off -----------------------------------------------------------------------------


def test_the_decoders_audio_reaches_the_segmenter_in_the_same_turn_without_the_pool(run: Run) -> None:
    run.put("decoder", opened(rate=16000, route="simple"))
    x = noise(0.3)
    run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(x[None, :], False)], pool="front-0")
    run.turn()
    state = run.segmenter.streams["s-1"]  # type: ignore[attr-defined]
    assert state.taken_s == pytest.approx(0.3)
    assert run.pools["decoder"].used_slots() == 0 and run.pools["decoder"].next_alloc <= 1
    assert "segmenter" not in run.wire.sent  # nothing on the wire
    assert run.pools["front-0"].used_slots() == 0  # the front's slab was read and released


@pytest.mark.skipif(not have_tools(), reason="needs espeak-ng and sox")
def test_one_process_says_exactly_what_two_processes_say() -> None:
    """The same client bytes through split and paired placement: the same events, progress,
    ends and work, to the same destinations (the resampler runs: 48 kHz in)."""
    sp = speech(TWO, rate=48000)
    said: dict[str, dict[str, list[Message]]] = {}
    for placement in ("split", "paired"):
        r = Run(placement)
        try:
            r.put(SEGMENTER_CONTROL, Ready(0, 100, 4, 8))
            feed(r, sp.samples)
            for _ in range(3):
                r.turn()
            said[placement] = {d: r.out(d) for d in ("front-0", "model-0", "model-1")}
        finally:
            r.close()
    assert said["split"]["front-0"], "the segmenter said nothing to the front"
    assert any(said["split"]["model-0"]), "no work went to a model"
    for dest in ("front-0", "model-0", "model-1"):
        assert [msgspec.to_builtins(i) for i in said["paired"][dest]] == \
            [msgspec.to_builtins(i) for i in said["split"][dest]], dest


def test_a_full_local_inbox_holds_the_decoder_back_as_a_full_pool_would(run: Run) -> None:
    assert run.hosted is not None
    run.hosted.local.max_packets = 2
    run.segmenter.accepting = lambda: False  # type: ignore[method-assign]  # e.g. too much waits for models
    run.put("decoder", opened(rate=16000, route="simple"))
    for _ in range(6):
        run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(noise(0.02)[None, :], False)], pool="front-0")
        run.turn()
    assert len(run.hosted.local.queues["segmenter"]) == 2
    assert run.decoder.held
    waiting = len(run.wire.inboxes["decoder"])
    run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(noise(0.02)[None, :], False)], pool="front-0")
    run.turn()
    assert len(run.wire.inboxes["decoder"]) == waiting + 1  # held: the fronts' packets wait
    del run.segmenter.accepting  # room again: everything goes through, in order
    for _ in range(4):
        run.turn()
    assert not run.decoder.held and not run.wire.inboxes["decoder"]
    assert run.segmenter.streams["s-1"].taken_s == pytest.approx(0.02 * 7)  # type: ignore[attr-defined]


def test_one_actors_backlog_does_not_take_the_others_turn(run: Run) -> None:
    run.put("decoder", opened(rate=16000, route="simple"))
    for _ in range(3 * Actor.turn_limit):
        run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(noise(0.02)[None, :], False)], pool="front-0")
    run.put(SEGMENTER_CONTROL, Ready(0, 100, 1, 8))
    run.turn()
    # The decoder took one turn's worth; the segmenter had its step too: the credit is known and
    # the decoder's audio of this turn was taken.
    assert len(run.wire.inboxes["decoder"]) == 3 * Actor.turn_limit + 1 - Actor.turn_limit
    assert run.segmenter.dispatcher.peers  # type: ignore[attr-defined]
    assert run.segmenter.streams["s-1"].taken_s == pytest.approx(0.02 * (Actor.turn_limit - 1))  # type: ignore[attr-defined]


def test_a_handler_that_raises_fails_its_stream_and_the_process_goes_on(run: Run) -> None:
    original = run.segmenter._frames  # type: ignore[attr-defined]

    def frames(msg: Frames, slab: Any) -> None:
        if msg.stream == "bad":
            raise RuntimeError("boom")
        original(msg, slab)

    run.segmenter._frames = frames  # type: ignore[attr-defined]
    for stream in ("bad", "good"):
        run.put("decoder", opened(stream, rate=16000, route="simple"))
    x = pcm_bytes(noise(0.1)[None, :], False)
    run.put("decoder", Pcm("bad", NOWHERE), Pcm("good", NOWHERE), audio=[x, x], pool="front-0")
    run.turn()
    failed = [i for i in run.out("front-0") if isinstance(i, Failed)]
    assert [f.stream for f in failed] == ["bad"]
    assert "bad" not in run.segmenter.streams  # type: ignore[attr-defined]
    assert run.segmenter.streams["good"].taken_s == pytest.approx(0.1)  # type: ignore[attr-defined]
    assert "bad" in run.decoder.streams  # type: ignore[attr-defined]  # the decoder knows nothing of it


def test_each_actor_of_a_process_counts_its_own_stage_metrics(run: Run) -> None:
    """One process, one registry: the decoder's and the segmenter's `streamer_stage_*` are told
    apart by their `stage` label, not added up under the process's name."""
    def audio_s(stage: str) -> float:
        return prometheus_client.REGISTRY.get_sample_value("streamer_stage_audio_seconds_total",
                                                           {"stage": stage}) or 0.0

    before = {stage: audio_s(stage) for stage in ("decoder", "segmenter", "model")}
    run.put("decoder", opened(rate=16000, route="simple"))
    for _ in range(5):
        run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(noise(0.1)[None, :], False)], pool="front-0")
        run.turn()
    run.decoder.stats()
    run.segmenter.stats()
    grew = {stage: audio_s(stage) - was for stage, was in before.items()}
    assert grew == pytest.approx({"decoder": 0.5, "segmenter": 0.5, "model": 0.0})


def test_at_stop_what_the_decoder_drains_is_still_read_by_the_segmenter(run: Run) -> None:
    assert run.hosted is not None
    run.put("decoder", opened(rate=16000, route="simple"))
    run.put("decoder", Pcm("s-1", NOWHERE), audio=[pcm_bytes(noise(0.1)[None, :], False)], pool="front-0")
    run.hosted.stop()
    assert run.segmenter.streams["s-1"].taken_s == pytest.approx(0.1)  # type: ignore[attr-defined]


# -- a death ----------------------------------------------------------------------------------------


class FakeSession:
    def __init__(self) -> None:
        self.stream = object()
        self.replays: list[str] = []

    def replay(self, why: str) -> None:
        self.replays.append(why)


class FakeDoors:
    def __init__(self) -> None:
        self.sessions = [FakeSession(), FakeSession()]


def test_a_front_replays_once_for_actors_that_died_in_one_process() -> None:
    doors = FakeDoors()
    died = StageDeaths(doors)  # type: ignore[arg-type]
    died(Exited("decoder", 0, 4242, "signal SIGKILL"))
    died(Exited("segmenter", 0, 4242, "signal SIGKILL"))
    assert [len(s.replays) for s in doors.sessions] == [1, 1]
    died(Exited("model", 1, 777, "signal SIGKILL"))
    died(Exited("segmenter", 0, 4243, "signal SIGKILL"))  # its successor, later
    assert [len(s.replays) for s in doors.sessions] == [2, 2]


def test_the_supervisor_tells_every_other_listener_of_both_actors_of_a_dead_process(tmp_path: Any) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    cfg = configured("paired", server={"run_dir": str(run_dir)}, metrics={"base_port": 0},
                     limits={"max_frame_bytes": 1 << 18}, segmenter={"max_segment_s": 5.0})
    sup = Supervisor(cfg)
    zctx: zmq.Context[sockets.Socket] = zmq.Context()
    try:
        sup._create_pools()
        inboxes = {}
        for name in sup.topology.listeners():
            sock = zctx.socket(zmq.PULL)
            sockets.bind_inbox(sock, sup.run_dir, name)
            inboxes[name] = sock
        (child,) = [c for c in sup.children if c.name == "decoder+segmenter"]
        assert child.hosted == PAIRED.places
        own = set(sup.topology.bound(PAIRED))
        assert own == {"decoder", SEGMENTER_CONTROL} and set(inboxes) - own  # the fronts' are heard
        sup._take_back(child, 4242, "signal SIGKILL")
        heard: dict[str, list[Exited]] = {name: [] for name in inboxes}
        for _ in range(500):
            sup._deliver()
            for name, sock in inboxes.items():
                heard[name] += [i for raw in sockets.drain(sock, 10) for i in decode(raw).items]  # type: ignore[misc]
            if all(len(h) == 2 for name, h in heard.items() if name not in own):
                break
            time.sleep(0.01)  # polling: the supervisor's sockets reconnect to the inboxes bound after them
        for _ in range(20):  # a note wrongly sent to the dead process's own inboxes would come by now
            sup._deliver()
            for name in own:
                heard[name] += [i for raw in sockets.drain(inboxes[name], 10) for i in decode(raw).items]  # type: ignore[misc]
            time.sleep(0.01)  # polling: as above
        # The dead process's own inboxes are its replacement's: they hear nothing of it.
        for name, notes in heard.items():
            assert [(n.role, n.pid) for n in notes] == ([] if name in own else
                                                        [("decoder", 4242), ("segmenter", 4242)]), name
        rows = {m.name: m for m in sup.snapshot().actors}
        assert rows["decoder"].process == rows["segmenter"].process == "decoder+segmenter"
        assert rows["model-0"].process is None
    finally:
        zctx.destroy(linger=0)
        sup._shutdown()


def test_a_child_of_several_actors_reports_each_ones_stats() -> None:
    child = Child.of(PAIRED)
    child.stats = {"decoder": {"processed": 3}, "segmenter": {"processed": 5, "inflight": 1}}
    rows = child.snapshot(0.0)
    assert [(r.name, r.processed, r.inflight) for r in rows] == [("decoder", 3, None), ("segmenter", 5, 1)]
