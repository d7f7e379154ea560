"""The sequential route's deaths, with the segmenter and real model actors in one process
(`tests/ensemble.py`): each case kills an actor at an exact moment and compares what the client
gets with an undisturbed run, and what is left held anywhere once the stream is over."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pytest

from streamer.actors.segmenter import Segmenter
from streamer.front.reorder import StreamOrder
from streamer.runtime.topology import Place
from streamer.transport.messages import NOWHERE, Abort, Checkpoint, Close, CutState, Drop, Frames, Open, encode

from audio import noise
from ensemble import Group
from rig import Rig

SECONDS = 3.5
X = noise(SECONDS)


def undisturbed(seconds: float = SECONDS) -> list[tuple[float, float, int, int]]:
    """The fake model's running count, a final every second: (start, end, count, total)."""
    out, start, total = [], 0, int(seconds * 16000)
    while start < total:
        end = min(start + 16000, total)
        out.append((start / 16000, end / 16000, end - start, end))
        start = end
    return out


@contextlib.contextmanager
def running(models: int = 2, **model: Any) -> Iterator[Group]:
    """The segmenter and `models` model actors of the fake model (a final every second)."""
    fake = {"constant_factor": 0.0, "final_every_s": 1.0, **model.pop("fake", {})}
    rig = Rig(Segmenter, Place("segmenter"), fronts=1, models=models, model={**model, "fake": fake})
    try:
        group = Group(rig, models)
        for index in range(models):
            group.start(index)
        group.settle()
        yield group
    finally:
        rig.close()


@pytest.fixture
def g() -> Iterator[Group]:
    with running() as group:
        yield group


def over(g: Group, stream: str = "s-1") -> None:
    """The stream ended as an undisturbed one would, and nothing of it is held anywhere."""
    assert g.failed == {}
    assert g.finals(stream) == undisturbed() and g.complete(stream)
    assert not any(g.held().values())
    assert g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]


def test_an_undisturbed_stream(g: Group) -> None:
    g.open("s-1")
    g.feed("s-1", X)
    g.close("s-1")
    g.settle()
    over(g)


def test_an_aborted_stream_lets_go_of_its_state_and_its_actor_goes_on(g: Group) -> None:
    """The client left: its actor drops the state, answers, and takes the next stream's work."""
    g.open("s-1")
    g.feed("s-1", X[:24000])
    g.settle()
    assert sum(g.held().values()) == 1
    g.rig.put("segmenter", Abort("s-1"))
    g.settle()
    assert g.held() == {0: 0, 1: 0} and g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]
    for stream in ("s-2", "s-3"):  # one on each actor
        g.open(stream)
    for stream in ("s-2", "s-3"):
        g.feed(stream, X)
        g.close(stream)
    g.settle()
    over(g, "s-2")
    over(g, "s-3")


def test_streams_aborted_together_are_each_forgotten() -> None:
    """A model with a batch call gets both aborts in one packet: each is its own item."""
    with running(models=1, fake={"delay": 0.001}) as g:
        for stream in ("s-1", "s-2"):
            g.open(stream)
            g.feed(stream, X[:8000])
        g.settle()
        assert g.held() == {0: 2}
        g.rig.put("segmenter", Abort("s-1"), Abort("s-2"))
        g.turn()
        (packet,) = g.rig.packets("model-0")
        assert [(type(w), w.stream) for w in packet.items] == [(Drop, "s-1"), (Drop, "s-2")]  # type: ignore[union-attr]
        g.rig.link.sent["model-0"] = [encode(packet)]
        g.settle()
        assert g.held() == {0: 0} and g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]


def test_the_actor_dies_twice_the_second_time_during_the_replay(g: Group) -> None:
    g.open("s-1")
    g.feed("s-1", X[:24000])
    g.settle()  # a checkpoint at 1.0 s
    a = g.bound()
    assert a is not None
    g.feed("s-1", X[24000:40000])  # 1.5-2.5 s: one piece on the actor, the rest waiting
    g.kill(a)
    g.turn()
    b = g.bound()
    assert b is not None and b != a
    for _ in range(3):  # the restore at 1.0 s and the replay's first pieces: no checkpoint yet
        g.step(b)
    g.kill(b)
    g.start(a)
    g.settle()
    g.start(b)
    g.feed("s-1", X[40000:])
    g.close("s-1")
    g.settle()
    over(g)


@pytest.mark.parametrize("answered", [True, False], ids=["its-done-came", "its-done-was-lost"])
def test_the_actor_dies_right_after_a_checkpoint(g: Group, answered: bool) -> None:
    g.open("s-1")
    g.feed("s-1", X[:30400])
    g.settle()
    a = g.bound()
    assert a is not None
    g.feed("s-1", X[30400:32000])  # the piece that ends at 2.0 s makes a final and a checkpoint
    g.deliver(a)
    g.run(a, answer=answered)
    g.turn()
    g.kill(a)
    g.settle()
    g.start(a)
    g.feed("s-1", X[32000:])
    g.close("s-1")
    g.settle()
    over(g)


@pytest.mark.parametrize("answered", [True, False], ids=["its-done-came", "its-done-was-lost"])
def test_the_actor_dies_between_a_close_and_its_done(g: Group, answered: bool) -> None:
    g.open("s-1")
    g.feed("s-1", X)
    g.settle()
    g.close("s-1")
    a = g.bound()
    assert a is not None
    g.deliver(a)
    g.run(a, answer=answered)
    g.turn()
    g.kill(a)
    g.settle()
    g.start(a)
    g.settle()
    over(g)
    assert [e.results for e in g.ends["s-1"]] == [[4]]


@pytest.mark.parametrize("closed", [False, True], ids=["open", "closed"])
def test_a_stream_whose_actors_die_running_it_fails_at_max_attempts(g: Group, closed: bool) -> None:
    """Its work kills every actor that runs it (its last piece or its close, then the restore
    of each replay). Closed or not, its front hears why at the third death, as for any item
    (`[model] max_attempts`), and nothing of it is kept."""
    g.open("s-1")
    g.feed("s-1", X[:-1600])
    g.settle()
    if closed:
        g.feed("s-1", X[-1600:])
        g.settle()
        g.close("s-1")  # the close is on the actor
    else:
        g.feed("s-1", X[-1600:])  # the last piece is on the actor
    deaths = 0
    while "s-1" not in g.failed and deaths < 6:
        index = g.bound()
        assert index is not None
        g.deliver(index)
        g.kill(index)
        deaths += 1
        g.start(index)
        g.turn()
    assert deaths == 3, g.failed
    assert g.failed["s-1"].startswith("the model actor holding this stream died 3 times")
    g.settle()
    assert not any(g.held().values()) and g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]


def test_deaths_of_its_actor_while_none_of_its_work_is_there_cost_a_stream_nothing(g: Group) -> None:
    """An actor killed for another reason (another stream's poison, an operator, the kernel)
    while this stream had nothing on it: the stream moves and goes on, however often."""
    g.open("s-1")
    g.feed("s-1", X[:24000])
    g.settle()  # a checkpoint at 1.0 s; nothing of the stream on its actor now
    for k in range(4):
        index = g.bound()
        assert index is not None
        g.kill(index)
        g.start(index)
        g.settle()
        g.feed("s-1", X[24000 + 1600 * k : 24000 + 1600 * (k + 1)])  # on, short of the next checkpoint
        g.settle()
    g.feed("s-1", X[24000 + 1600 * 4 :])
    g.close("s-1")
    g.settle()
    over(g)


def test_a_stream_that_kills_its_actors_takes_no_other_stream_down_with_it() -> None:
    """A model with a batch call: items of several streams on one actor share a packet. Once a
    death has counted against a stream, its work travels in packets of its own, so should it
    kill the next actor too, only its own count grows: the stream beside it goes on."""
    with running(models=1, fake={"delay": 0.001}) as g:
        for stream in ("poison", "s-1"):
            g.open(stream)
            g.feed(stream, X[:8000], step=8000)  # one piece each: their replays are short
        g.settle()
        g.feed("poison", X[8000:9600])  # on the actor
        g.feed("s-1", X[8000:9600])  # waiting, then in one packet with the poison's next piece
        g.feed("poison", X[9600:11200])
        g.step(0)
        deaths = 0
        while "poison" not in g.failed and deaths < 6:
            g.turn()
            if any(w.stream == "poison" for w in g.waiting_on(0)):  # it kills whoever runs its work
                g.deliver(0)
                g.kill(0)
                g.start(0)
                deaths += 1
            else:
                g.run(0, g.deliver(0))
        assert deaths == 3 and list(g.failed) == ["poison"]
        g.feed("s-1", X[9600:])
        g.close("s-1")
        g.settle()
        assert g.finals("s-1") == undisturbed() and g.complete("s-1") and list(g.failed) == ["poison"]
        assert g.held() == {0: 0} and g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]


def test_a_replay_after_the_decoder_died_is_not_undone_by_a_checkpoint_from_before_it(g: Group) -> None:
    """The decoder died: the front sends the stream again from its last usable checkpoint (1.0 s)
    while the actor still runs a piece from before, whose checkpoint (2.0 s) comes after the
    replay began. The replay's audio goes on from 1.0 s, so when the actor then dies, the
    stream must be restored at 1.0 s, not at 2.0 s (which would count 1.0-2.0 s twice)."""
    g.open("s-1")
    g.feed("s-1", X[:30400])
    g.settle()
    a = g.bound()
    assert a is not None
    g.feed("s-1", X[30400:32000])  # on the actor: it will make the final and checkpoint at 2.0 s
    g.open("s-1", resume=Checkpoint(16000, [CutState(16000, False, 1, 0, {"start": 16000, "total": 16000})]))
    g.turn()
    g.step(a)  # the piece from before the replay is answered
    g.feed("s-1", X[16000:20800])
    for _ in range(3):
        g.step(a)  # the replay's restore at 1.0 s and its first pieces
    g.kill(a)
    g.settle()
    g.start(a)
    g.feed("s-1", X[20800:])
    g.close("s-1")
    g.settle()
    over(g)


def test_a_replay_during_the_close_is_not_ended_by_the_close_from_before_it() -> None:
    """The decoder died while the stream's close was on its actor (two credits: the replay's
    restore goes right behind it). That close's answer ends what the actor had; the replay's
    own close must end the state the replay built, or it is held forever."""
    with running(max_inflight=2) as g:
        g.open("s-1")
        g.feed("s-1", X)
        g.settle()
        g.close("s-1")
        g.open("s-1", resume=Checkpoint(48000, [CutState(48000, False, 3, 0, {"start": 48000, "total": 48000})]))
        g.feed("s-1", X[48000:])
        g.close("s-1")
        g.settle()
        over(g)


@pytest.mark.parametrize("end", ["close", "abort"])
def test_a_dead_decoders_open_read_after_the_replay_ended_leaves_nothing_held(end: str) -> None:
    """The decoder died with a new stream's `Open` still queued for a segmenter that was behind;
    the replay (run 1) went through the new decoder and was read first, all of it, up to its stop
    (or its client left). The dead decoder's `Open` of run 0, read last, is of a run that is
    over: it must not open the stream again, or its restore follows the close (or the drop) onto
    the actor, and the state it builds there is nobody's, held for good."""
    with running(max_inflight=2, fake={"delay": 0.001}) as g:
        run0 = Open("s-1", 0, "sequential", 1, 16000, 16, False, False)
        g.orders["s-1"], g.got["s-1"], g.ends["s-1"] = StreamOrder(1), [], []
        g.rig.put("segmenter", msgspec.structs.replace(run0, resume=Checkpoint.start(1), gen=1))
        for i in range(0, X.shape[0], 1600):
            piece = np.ascontiguousarray(X[i : i + 1600], np.float32)
            g.rig.put("segmenter", Frames("s-1", 1, piece.shape[0], NOWHERE, gen=1), audio=[piece], pool="decoder")
            g.turn()
        g.rig.put("segmenter", Close("s-1", gen=1) if end == "close" else Abort("s-1"), run0)
        g.turn()
        g.settle()
        if end == "close":
            assert g.finals("s-1") == undisturbed() and g.complete("s-1")
        assert g.held() == {0: 0, 1: 0}
        assert g.rig.actor.dispatcher.sequential.streams == {}  # type: ignore[attr-defined]
