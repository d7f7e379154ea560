"""The segmenter actor and its dispatcher on their own: frames in, events to the front, work to
model slots by credit (finals first, batched, redone after a death), load reports by the clock."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import prometheus_client
import pytest

from streamer.actors.segmenter import LOAD_EVERY_S, Segmenter
from streamer.runtime.topology import SEGMENTER_CONTROL, Place
from streamer.transport.messages import (
    NOWHERE,
    Abort,
    Checkpoint,
    Close,
    Done,
    Event,
    Exited,
    Failed,
    Forget,
    Frames,
    Infer,
    Load,
    Open,
    Packet,
    Point,
    Progress,
    Ready,
    Restore,
    Result,
    Roster,
    StreamEnd,
    Work,
)

from audio import noise, speech
from rig import Rig

TWO = ("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.")


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(Segmenter, Place("segmenter"), fronts=2, models=2)
    try:
        yield r
    finally:
        r.close()


def stream_in(rig: Rig, x: np.ndarray, stream: str = "s-1", front: int = 0, route: str = "segmented",
              interim: bool = False, step: int = 1600, close: bool = True) -> None:
    """Open, then the audio in `step`-sample Frames, one packet and one turn each, then Close."""
    rig.put("segmenter", Open(stream, front, route, 1, 16000, 16, False, interim))  # type: ignore[arg-type]
    for i in range(0, x.shape[0], step):
        piece = np.ascontiguousarray(x[i : i + step], np.float32)
        rig.put("segmenter", Frames(stream, 1, piece.shape[0], NOWHERE), audio=[piece], pool="decoder")
        rig.turn()
    if close:
        rig.put("segmenter", Close(stream))
        rig.turn()


def ready(rig: Rig, index: int, pid: int, capacity: int = 2, max_batch: int = 8) -> None:
    rig.put(SEGMENTER_CONTROL, Ready(index, pid, capacity, max_batch))


def work_packets(rig: Rig, index: int) -> list[Packet]:
    """The packets of work sent to model-`index` (not the `Forget` each new pid gets first)."""
    return [p for p in rig.packets(f"model-{index}") if not all(isinstance(i, Forget) for i in p.items)]


def done(rig: Rig, index: int, pid: int, packet: Packet) -> None:
    rig.put(SEGMENTER_CONTROL, Done(index, pid, [w.work_id for w in packet.items if isinstance(w, Work)], 0.01))


def test_speech_gives_events_to_its_front_and_finals_to_a_model_with_credit(rig: Rig) -> None:
    sp = speech(TWO)
    stream_in(rig, sp.samples, front=1)
    told = rig.sent("front-1")
    assert [e.kind for e in told if isinstance(e, Event)] == ["active", "inactive", "active", "inactive"]
    (end,) = [i for i in told if isinstance(i, StreamEnd)]
    assert end.results == [2] and end.events == [4]
    assert work_packets(rig, 0) == [] and work_packets(rig, 1) == []  # no credit announced yet: nothing sent
    ready(rig, 0, 100)
    rig.turn()
    (packet,) = work_packets(rig, 0)  # both finals waiting: one packet, one allocation
    works = [w for w in packet.items if isinstance(w, Infer)]
    assert [(w.seq, w.is_final, w.front) for w in works] == [(0, True, 1), (1, True, 1)]
    for w in works:
        audio = rig.read(packet, w.at)
        assert audio.shape[0] == round((w.end_time - w.start_time) * 16000)


def _histogram(name: str) -> tuple[float, float]:
    """(count, sum) of one of this process's histograms (the registry is shared by the tests)."""
    get = prometheus_client.REGISTRY.get_sample_value
    return get(f"{name}_count") or 0.0, get(f"{name}_sum") or 0.0


def test_a_finals_wait_for_an_actor_and_at_it_are_measured_apart_from_the_call(rig: Rig) -> None:
    """Where a final's time goes besides the model call: waiting here for a model actor, and
    from its hand-out to its `Done` less the call (`busy_s`): queued at the actor, and the hops."""
    stream_in(rig, speech(TWO).samples)  # two finals wait: no actor has announced itself
    here, there = _histogram("streamer_dispatch_final_wait_seconds"), _histogram("streamer_dispatch_model_wait_seconds")
    rig.clock.advance(1.5)
    ready(rig, 0, 100)
    rig.turn()
    (packet,) = work_packets(rig, 0)
    rig.clock.advance(0.7)
    rig.put(SEGMENTER_CONTROL, Done(0, 100, [w.work_id for w in packet.items if isinstance(w, Work)], 0.2))
    rig.turn()
    count, total = _histogram("streamer_dispatch_final_wait_seconds")
    assert count - here[0] == 2 and total - here[1] >= 2 * 1.5  # each final, from its cut to its hand-out
    count, total = _histogram("streamer_dispatch_model_wait_seconds")
    assert count - there[0] == 1 and total - there[1] == pytest.approx(0.5)  # one packet: 0.7 s less 0.2 s of call


def test_a_final_back_from_a_dead_actor_waits_from_its_return_not_from_its_cut(rig: Rig) -> None:
    """The time it spent handed to the actor that died is not time it waited for one."""
    stream_in(rig, speech(TWO).samples)
    rig.clock.advance(1.0)
    ready(rig, 0, 100)
    rig.turn()  # both finals waited 1 s and more, and went in one packet
    before = _histogram("streamer_dispatch_final_wait_seconds")
    rig.clock.advance(5.0)  # on model-0, which dies
    rig.put(SEGMENTER_CONTROL, Exited("model", 0, 100, "signal SIGKILL"))
    rig.turn()
    rig.clock.advance(0.25)
    ready(rig, 1, 200)
    rig.turn()
    assert sorted(w.seq for p in work_packets(rig, 1) for w in p.items if isinstance(w, Infer)) == [0, 1]
    count, total = _histogram("streamer_dispatch_final_wait_seconds")
    assert count - before[0] == 2 and total - before[1] == pytest.approx(2 * 0.25)


def test_a_slot_never_holds_more_packets_than_its_credit(rig: Rig) -> None:
    ready(rig, 0, 100, capacity=1, max_batch=1)
    stream_in(rig, speech(TWO).samples)
    first = work_packets(rig, 0)
    assert len(first) == 1  # the second final waits for a credit
    done(rig, 0, 100, first[0])
    rig.turn()
    assert len(work_packets(rig, 0)) == 1


def test_finals_go_ahead_of_interims_and_one_interim_per_channel_waits(rig: Rig) -> None:
    sp = speech(TWO, gap_s=1.0)
    stream_in(rig, sp.samples, interim=True)
    d = rig.actor.dispatcher  # type: ignore[attr-defined]
    assert d.superseded > 0  # interims of a region replaced by newer ones while nobody could take them
    assert d.queued == 2  # the two finals; each region's waiting interim gave way to its final
    ready(rig, 0, 100, capacity=1, max_batch=8)
    rig.turn()
    (packet,) = work_packets(rig, 0)
    assert [w.is_final for w in packet.items if isinstance(w, Infer)] == [True, True]


def test_interims_leave_a_slot_free_so_a_final_never_waits_behind_them(rig: Rig) -> None:
    """Two slots: interims of two open regions run on one of them at most, and when a region
    ends its final goes at once to the other, in a call of its own."""
    ready(rig, 0, 100, capacity=1, max_batch=8)
    ready(rig, 1, 200, capacity=1, max_batch=8)
    sp = speech(TWO[:1])
    mid = int((sp.truth[0][0] + 1.6) * 16000)  # 1.6 s into the sentence: interims at 0.5 and 1 s
    stream_in(rig, sp.samples[:mid], stream="s-2", interim=True, close=False)
    stream_in(rig, sp.samples[:mid], stream="s-1", interim=True, close=False)
    running = work_packets(rig, 0) + work_packets(rig, 1)
    assert len(running) == 1 and {w.is_final for w in running[0].items if isinstance(w, Infer)} == {False}
    d = rig.actor.dispatcher  # type: ignore[attr-defined]
    busy = 0 if d.peers[0].batches else 1
    assert d.queued == 2  # each stream's newest interim waits
    for i in range(mid, sp.samples.shape[0], 1600):  # s-1's region ends
        piece = np.ascontiguousarray(sp.samples[i : i + 1600], np.float32)
        rig.put("segmenter", Frames("s-1", 1, piece.shape[0], NOWHERE), audio=[piece], pool="decoder")
        rig.turn()
    assert work_packets(rig, busy) == []
    (packet,) = work_packets(rig, 1 - busy)
    assert [(w.stream, w.is_final) for w in packet.items if isinstance(w, Infer)] == [("s-1", True)]


def test_work_of_a_dead_model_is_redone_elsewhere_and_only_the_running_packet_spends_an_attempt(rig: Rig) -> None:
    ready(rig, 0, 100, capacity=2, max_batch=1)
    stream_in(rig, speech(TWO).samples)
    running, queued = work_packets(rig, 0)
    ready(rig, 1, 200, capacity=2, max_batch=1)
    rig.put(SEGMENTER_CONTROL, Exited("model", 0, 100, "signal SIGKILL"))
    rig.turn()
    again = work_packets(rig, 1)
    attempts = {w.seq: w.attempt for p in again for w in p.items if isinstance(w, Infer)}
    assert attempts == {running.items[0].seq: 2, queued.items[0].seq: 1}  # type: ignore[union-attr]
    # The dead index's allocations are taken back here (only the segmenter knows them); only the
    # packets now with model-1 hold slots.
    assert rig.pools["segmenter"].used_slots() == sum(p.slab.nslots for p in again if p.slab is not None)


def test_a_models_answers_reach_each_streams_front_only_with_a_credit_the_dispatcher_counts(rig: Rig) -> None:
    """Results travel inside the model's `Done`: the segmenter forwards them to each stream's
    front. Those of a `Done` from a process already declared dead are dropped: its items went
    back to the queue and are redone, so they are answered once, by the redo."""
    stream_in(rig, speech(TWO).samples, stream="s-1", front=1)
    ready(rig, 0, 100, capacity=1, max_batch=8)
    rig.turn()
    (packet,) = work_packets(rig, 0)  # both finals in one call
    works = [w for w in packet.items if isinstance(w, Infer)]
    answers = [Result(w.stream, w.channel, w.seq, w.events_before, w.start_time, w.end_time, True, {"count": 1})
               for w in works]
    rig.sent("front-1")
    rig.put(SEGMENTER_CONTROL, Done(0, 100, [w.work_id for w in works], 0.01, answers=answers))
    rig.turn()
    assert [r.seq for r in rig.sent("front-1", Result)] == [0, 1]
    assert rig.sent("front-0", Result) == []
    stream_in(rig, speech(TWO).samples, stream="s-2", front=0)
    (packet,) = work_packets(rig, 0)
    works = [w for w in packet.items if isinstance(w, Infer)]
    assert len(works) == 1  # the first final went at once; the second waits for the credit
    late = [Result(w.stream, w.channel, w.seq, w.events_before, w.start_time, w.end_time, True, {"count": 1})
            for w in works]
    rig.put(SEGMENTER_CONTROL, Exited("model", 0, 100, "signal SIGKILL"))
    rig.put(SEGMENTER_CONTROL, Done(0, 100, [w.work_id for w in works], 0.01, answers=late))
    rig.turn()
    assert rig.sent("front-0", Result) == []  # dropped with its Done: the item waits to be redone
    assert rig.actor.dispatcher.queued == 2  # type: ignore[attr-defined]


def test_an_item_that_kills_every_model_gets_one_error_and_takes_nobody_with_it(rig: Rig) -> None:
    stream_in(rig, speech(TWO).samples)
    pid = 100
    errors: list[Result] = []
    for _ in range(6):
        ready(rig, 0, pid, capacity=1, max_batch=8)
        rig.turn()
        packets = work_packets(rig, 0)
        errors += [r for r in rig.sent("front-0", Result) if r.error]
        if not packets:
            break
        (packet,) = packets
        works = [w for w in packet.items if isinstance(w, Infer)]
        if works[0].seq == 0:  # the poison: kills whoever runs it
            rig.put(SEGMENTER_CONTROL, Exited("model", 0, pid, "signal SIGABRT"))
            pid += 1
        else:
            done(rig, 0, pid, packet)
        rig.turn()
        errors += [r for r in rig.sent("front-0", Result) if r.error]
    assert [(e.seq, "died 3 times" in (e.error or "")) for e in errors] == [(0, True)]


def test_abort_forgets_a_streams_waiting_work(rig: Rig) -> None:
    stream_in(rig, speech(TWO).samples, close=False)
    rig.put("segmenter", Close("s-1"), Abort("s-2"))
    rig.turn()
    assert rig.actor.dispatcher.queued == 2  # type: ignore[attr-defined]
    rig.put("segmenter", Abort("s-1"))
    rig.turn()
    assert rig.actor.dispatcher.queued == 0  # type: ignore[attr-defined]


def test_simple_route_chunks_every_sample(rig: Rig) -> None:
    x = noise(1.3)
    stream_in(rig, x, route="simple", step=1000)
    (end,) = rig.sent("front-0", StreamEnd)
    assert end.results == [3] and end.events == [0]
    ready(rig, 0, 100, capacity=4, max_batch=8)
    rig.turn()
    works = [w for p in work_packets(rig, 0) for w in p.items if isinstance(w, Infer)]
    assert [w.is_final for w in works] == [None] * 3
    assert sum(round((w.end_time - w.start_time) * 16000) for w in works) == x.shape[0]


def test_every_front_hears_the_load_twice_a_second_by_the_clock(rig: Rig) -> None:
    rig.turn()
    assert len(rig.sent("front-0", Load)) == 1 and len(rig.sent("front-1", Load)) == 1
    rig.clock.advance(LOAD_EVERY_S / 2)
    rig.turn()
    assert rig.sent("front-0", Load) == []
    rig.clock.advance(LOAD_EVERY_S / 2)
    ready(rig, 0, 100)
    rig.turn()
    (load,) = rig.sent("front-1", Load)
    assert load.actors == 2 and load.streams == 0  # every index counts, live or restarting


def test_reclaimed_audio_stops_the_stream_until_its_replay_rebuilds_it(rig: Rig) -> None:
    rig.put("segmenter", Open("s-1", 1, "segmented", 1, 16000, 16, False, False))
    rig.turn()
    piece = speech(TWO).samples[:16000]
    rig.put("segmenter", Frames("s-1", 1, piece.shape[0], NOWHERE), audio=[piece], pool="decoder")
    rig.pools["decoder"].reclaim()  # the decoder restarted before the segmenter read it
    rig.put("segmenter", Close("s-1"))
    rig.turn()
    told = [i for i in rig.sent("front-1") if not isinstance(i, Load)]
    assert told == []  # no end with a hole in it, and no error: the replay follows
    assert rig.actor.streams["s-1"].lost  # type: ignore[attr-defined]


def test_a_replay_rebuilds_the_stream_and_numbers_what_it_makes_again_as_before(rig: Rig) -> None:
    """The segmenter dies mid-stream; its replacement gets the stream again from the last
    checkpoint the front kept: the same finals with the same seq, the same events with the
    same indexes (the front drops those it already has)."""
    sp = speech(TWO)
    stream_in(rig, sp.samples, front=1)
    want = rig.sent("front-1")
    marks = [i for i in want if isinstance(i, Progress)]
    cp = marks[len(marks) // 2].checkpoint  # somewhere in the middle
    again = Rig(Segmenter, Place("segmenter"), fronts=2, models=2)
    try:
        again.put("segmenter", Open("s-1", 1, "segmented", 1, 16000, 16, False, False, resume=cp))
        x = sp.samples[cp.sample :]
        for i in range(0, x.shape[0], 1600):
            again.put("segmenter", Frames("s-1", 1, x[i : i + 1600].shape[0], NOWHERE), audio=[x[i : i + 1600]],
                      pool="decoder")
            again.turn()
        again.put("segmenter", Close("s-1"))
        again.turn()
        got = again.sent("front-1")
        want_events = {e.index: (e.kind, e.time) for e in want if isinstance(e, Event)}
        got_events = {e.index: (e.kind, e.time) for e in got if isinstance(e, Event)}
        assert min(got_events, default=cp.channels[0].events) >= cp.channels[0].events
        for k, (kind, t) in got_events.items():
            assert want_events[k][0] == kind and abs(want_events[k][1] - t) <= 0.03
        assert [i for i in got if isinstance(i, StreamEnd)] == [i for i in want if isinstance(i, StreamEnd)]
        ready(again, 0, 100, capacity=8)
        again.turn()
        seqs = [w.seq for p in work_packets(again, 0) for w in p.items if isinstance(w, Infer)]
        assert seqs == list(range(cp.channels[0].finals, 2))
    finally:
        again.close()


def test_a_stream_whose_handling_raises_fails_alone_and_the_others_go_on(rig: Rig) -> None:
    sp = speech(TWO).samples
    rig.put("segmenter", Open("bad", 0, "segmented", 1, 16000, 16, False, False),
            Open("good", 1, "segmented", 1, 16000, 16, False, False))
    rig.turn()
    # A Frames item claiming more audio than its slice holds (an upstream bug): numpy raises.
    piece = sp[:1600]
    rig.put("segmenter", Frames("bad", 1, 16000, NOWHERE), Frames("good", 1, 1600, NOWHERE), audio=[piece, piece],
            pool="decoder")
    rig.turn()
    (failed,) = rig.sent("front-0", Failed)
    assert failed.stream == "bad" and "internal error" in failed.message
    for i in range(1600, sp.shape[0], 1600):
        rig.put("segmenter", Frames("good", 1, sp[i : i + 1600].shape[0], NOWHERE), audio=[sp[i : i + 1600]],
                pool="decoder")
        rig.turn()
    assert [e.kind for e in rig.sent("front-1", Event)] == ["active", "inactive"] * 2


def test_a_stream_whose_tail_raises_at_close_fails_alone_and_the_others_close(rig: Rig) -> None:
    """Cutting a stream's last region at its `Close` is its handling too: an error there fails that
    stream, not the process (whose replacement would be handed the same `Close` in its replay)."""
    sp = speech(TWO).samples[:16000]
    rig.put("segmenter", Open("bad", 0, "segmented", 1, 16000, 16, False, False),
            Open("good", 1, "segmented", 1, 16000, 16, False, False))
    rig.turn()
    rig.put("segmenter", Frames("bad", 1, sp.shape[0], NOWHERE), Frames("good", 1, sp.shape[0], NOWHERE),
            audio=[sp, sp], pool="decoder")
    rig.turn()

    def broken() -> list[object]:
        raise RuntimeError("a bug in the last cut")

    rig.actor.streams["bad"].cutters[0].flush = broken  # type: ignore[attr-defined,method-assign]
    rig.put("segmenter", Close("bad"), Close("good"))
    rig.turn()
    (failed,) = rig.sent("front-0", Failed)
    assert failed.stream == "bad" and "internal error in the segmenter: RuntimeError" in failed.message
    assert [e.stream for e in rig.sent("front-1", StreamEnd)] == ["good"]
    assert rig.actor.streams == {}  # type: ignore[attr-defined]


def test_a_streams_model_demand_is_known_from_its_first_final(rig: Rig) -> None:
    """Per second of answered audio, not per second open: a burst of new sessions must not all
    get in while every stream still looks free (the admission sweep admitted 13 of 24 busy
    streams, twice what two cores carry, before any stream was old enough to count)."""
    ready(rig, 0, 100)
    stream_in(rig, speech(TWO).samples, close=False)  # a few seconds: no clock time passes
    works = [w for p in work_packets(rig, 0) for w in p.items if isinstance(w, Infer)]
    assert [w.is_final for w in works] == [True, True]
    rig.put(SEGMENTER_CONTROL, Done(0, 100, [w.work_id for w in works], 1.2))
    rig.clock.advance(LOAD_EVERY_S)
    rig.turn()
    load = rig.sent("front-0", Load)[-1]
    assert load.streams == 1
    assert load.per_stream == pytest.approx(1.2 / max(w.end_time for w in works), abs=1e-4)


def test_the_load_counts_only_finals_of_open_streams_as_waiting(rig: Rig) -> None:
    """Regression: twenty streams that started together also stopped together (the soak's first
    turnover), and their last finals, flushed at `stop`, waited behind each other for the two
    model actors. Counted as the models falling behind, they had newcomers refused (`behind`)
    at half capacity, though those streams were gone and could queue nothing more, and a
    newcomer's first final comes only once it has spoken. The finals of open streams still
    count: if they wait behind such a backlog, the models are behind for someone."""
    ready(rig, 0, 100, capacity=1, max_batch=1)  # one call at a time: the rest waits
    for name in ("a", "b"):
        stream_in(rig, speech(TWO).samples, stream=name)  # two regions each, then stop
    assert rig.actor.dispatcher.queued == 3  # type: ignore[attr-defined]
    rig.clock.advance(2.0)
    rig.turn()
    load = rig.sent("front-0", Load)[-1]
    assert load.streams == 0 and load.queue_delay_s == 0.0  # the backlog is of ended streams only
    assert load.queued_audio_s > 0  # (still there, and said so)
    stream_in(rig, speech(TWO).samples, stream="c", close=False)  # its finals queue behind it
    rig.clock.advance(1.5)
    rig.turn()
    load = rig.sent("front-0", Load)[-1]
    assert load.streams == 1 and load.queue_delay_s == pytest.approx(1.5)


def test_every_model_process_first_hears_forget_once_before_any_work(rig: Rig) -> None:
    """A new segmenter (or a new model process) starts with `Forget`, alone, the first time it
    hears the pid: what that process held for an earlier segmenter goes, before this one's
    work arrives (one peer's messages stay in order). Once per pid; a pid it cannot reach yet
    gets nothing until the `Forget` has gone."""
    d = rig.actor.dispatcher  # type: ignore[attr-defined]
    rig.link.refusing.add("model-1")
    ready(rig, 0, 100)
    ready(rig, 1, 200)
    rig.turn()
    (hello,) = rig.packets("model-0")
    assert hello.items == [Forget(d.first_id)] and hello.slab is None
    stream_in(rig, noise(1.0), route="sequential", close=False)
    ready(rig, 0, 100)  # heard again, every second: nothing more
    rig.turn()
    firsts = rig.packets("model-0")
    works = [w for p in firsts for w in p.items]
    assert works and all(isinstance(w, Work) and w.work_id >= d.first_id for w in works)
    assert rig.packets("model-1") == []  # unreachable: no Forget went, so no work either
    rig.link.refusing.clear()  # reachable now: greeted at the next turn, not at its next `Ready`
    stream_in(rig, noise(1.0), stream="s-2", route="sequential", close=False)
    rig.turn()
    hello, *rest = rig.packets("model-1")
    assert hello.items == [Forget(d.first_id)]
    assert rest and {w.stream for p in rest for w in p.items if isinstance(w, Work)} == {"s-2"}
    rig.put(SEGMENTER_CONTROL, Exited("model", 0, 100, "signal SIGKILL"))
    ready(rig, 0, 101)  # its successor
    ready(rig, 1, 201)  # replaced, and nobody said so
    rig.turn()
    assert rig.packets("model-0")[0].items == [Forget(d.first_id)]
    assert rig.packets("model-1")[0].items == [Forget(d.first_id)]


def test_a_new_segmenter_numbers_its_work_above_all_of_its_predecessors(rig: Rig) -> None:
    """Even when the predecessor never allocated (a sequential stream's restore carries no
    audio): a model actor tells its predecessor's late work from its own by the number."""
    ready(rig, 0, 100)
    rig.put("segmenter", Open("s-1", 0, "sequential", 1, 16000, 16, False, False))
    rig.turn()
    (restore,) = [w for p in work_packets(rig, 0) for w in p.items if isinstance(w, Work)]
    assert isinstance(restore, Restore)
    successor = Segmenter(rig.actor.env)
    assert successor.dispatcher.first_id > restore.work_id


def test_checkpoints_in_a_done_for_work_that_is_not_ours_are_ignored(rig: Rig) -> None:
    """A model actor that finishes a dead segmenter's packet answers its successor, whose stream
    of the same name may be bound to that very actor again: the checkpoint in that `Done` is
    the predecessor's. Taken as this stream's, a later death would restore it (work this
    segmenter never numbered, which the actor skips) and feed audio from elsewhere on it."""
    ready(rig, 0, 100)
    ready(rig, 1, 200)
    stream_in(rig, noise(1.0), route="sequential", close=False)
    restore = next(w for p in work_packets(rig, 0) for w in p.items if isinstance(w, Work))
    stale = Point("s-1", 0, restore.work_id - 5, 8000, 3, {"start": 0, "total": 8000})
    rig.put(SEGMENTER_CONTROL, Done(0, 100, [stale.work_id], 0.0, points=[stale]))
    rig.put(SEGMENTER_CONTROL, Exited("model", 0, 100, "signal SIGKILL"))
    rig.turn()
    first = next(w for p in work_packets(rig, 1) for w in p.items if isinstance(w, Work))
    assert isinstance(first, Restore) and (first.work_id, first.finals, first.state) == (restore.work_id, 0, None)


def test_a_replayed_stream_takes_nothing_of_the_run_its_replay_superseded(rig: Rig) -> None:
    """What a dead decoder had queued can reach the segmenter after its replacement's replay (ZeroMQ
    interleaves the two): its audio, reclaimed meanwhile, must not stop the replayed stream, and
    its `Open` or `Close` must neither restart nor end it."""
    x = speech(TWO).samples
    stream_in(rig, x[:16000], route="simple", close=False)  # run 0, as the dead decoder sent it
    again = Open("s-1", 0, "simple", 1, 16000, 16, False, False, resume=Checkpoint.start(1), gen=1)
    rig.put("segmenter", again)
    rig.put("segmenter", Frames("s-1", 1, 1600, NOWHERE), audio=[x[16000:17600]], pool="decoder")
    rig.pools["decoder"].reclaim()  # the replacement reclaimed the dead decoder's packet at its start
    rig.put("segmenter", Open("s-1", 0, "simple", 1, 16000, 16, False, False), Close("s-1"))
    rig.turn()
    state = rig.actor.streams["s-1"]  # type: ignore[attr-defined]
    assert not state.lost and state.start == again
    rig.put("segmenter", Frames("s-1", 1, 8000, NOWHERE, gen=1), audio=[x[:8000]], pool="decoder")
    rig.put("segmenter", Close("s-1", gen=1))
    rig.turn()
    (end,) = rig.sent("front-0", StreamEnd)
    assert end.results == [1]  # run 1's own audio, and its end


def test_a_stream_its_front_no_longer_has_is_forgotten_with_its_waiting_work(rig: Rig) -> None:
    """The `Abort` of a stream whose client left can die with the decoder; the front's roster is
    what ends it then."""
    x = speech(TWO).samples
    stream_in(rig, x, stream="s-1", front=0, close=False)
    stream_in(rig, x, stream="s-2", front=0, close=False)
    stream_in(rig, x, stream="s-3", front=1, close=False)
    assert rig.actor.dispatcher.queued == 6  # type: ignore[attr-defined]
    rig.put("segmenter", Roster(0, ["s-1"]))
    rig.turn()
    assert set(rig.actor.streams) == {"s-1", "s-3"}  # type: ignore[attr-defined]
    assert rig.actor.dispatcher.queued == 4  # type: ignore[attr-defined]


def test_a_sequential_streams_model_demand_is_known_from_the_audio_its_model_has_taken(rig: Rig) -> None:
    """On the sequential route the answered audio is what the stream's model actor has been fed
    (its `Feed`s' ends), not the ends of finals: the model puts those where it likes."""
    ready(rig, 0, 100, capacity=1, max_batch=8)
    stream_in(rig, noise(3.0), route="sequential", close=False)  # a Restore, then a Feed per 0.1 s
    calls = 0
    while packets := work_packets(rig, 0):
        (packet,) = packets
        rig.put(SEGMENTER_CONTROL, Done(0, 100, [w.work_id for w in packet.items if isinstance(w, Work)], 0.3))
        rig.turn()
        calls += 1
    rig.clock.advance(LOAD_EVERY_S)
    rig.turn()
    load = rig.sent("front-0", Load)[-1]
    assert calls > 1 and load.per_stream == pytest.approx(calls * 0.3 / 3.0, abs=1e-4)


def test_a_roster_read_late_forgets_no_stream_opened_after_it_was_listed(rig: Rig) -> None:
    """A roster the dead decoder had queued can reach the segmenter after what its replacement sent
    (ZeroMQ interleaves the two connections): the `Open` of a stream its front opened after that
    roster was listed. The roster says nothing of that stream: it must not forget it. A roster
    listed after the stream opened, without it, still does."""
    x = speech(TWO).samples
    rig.put("segmenter", Open("s-1", 0, "simple", 1, 16000, 16, False, False, opened_at=20.0))
    rig.put("segmenter", Roster(0, [], listed_at=19.0))  # listed before s-1 opened, read after its Open
    rig.put("segmenter", Frames("s-1", 1, 8000, NOWHERE), audio=[x[:8000]], pool="decoder")
    rig.put("segmenter", Close("s-1"))
    rig.turn()
    (end,) = rig.sent("front-0", StreamEnd)
    assert end.results == [1]
    stream_in(rig, x[:8000], stream="s-2", route="simple", close=False)  # opened_at 0: long ago
    rig.put("segmenter", Roster(0, [], listed_at=21.0))
    rig.turn()
    assert "s-2" not in rig.actor.streams  # type: ignore[attr-defined]
