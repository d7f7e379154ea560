"""The model actor on its own: a packet of work, one model call, its answers inside the credit that returns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from streamer.actors.model_actor import READY_EVERY_S, ModelActor
from streamer.runtime.topology import SEGMENTER_CONTROL, Place
from streamer.transport.messages import (
    Checkpoint,
    CloseChannel,
    Done,
    Drop,
    Feed,
    Forget,
    Infer,
    Progress,
    Ready,
    Restore,
    Result,
    StreamEnd,
)

from audio import noise
from rig import Rig


def make(**fake: Any) -> Rig:
    return Rig(ModelActor, Place("model", 1), fronts=2, model={"fake": {"constant_factor": 0.0, **fake}})


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make()
    try:
        yield r
    finally:
        r.close()


def work(work_id: int, front: int, seconds: float, seq: int = 0, is_final: bool | None = True) -> Infer:
    return Infer(work_id=work_id, stream=f"s-{front}", front=front, channel=0, seq=seq, events_before=0,
                 start_time=0.0, end_time=seconds, is_final=is_final)


def give(rig: Rig, *items: tuple[Infer, np.ndarray]) -> None:
    rig.put("model-1", *[w for w, _ in items], audio=[a for _, a in items], pool="segmenter")


def answered(rig: Rig) -> tuple[list[Done], list[Any]]:
    """The credits the actor returned since the last look, and every answer they carry."""
    dones = rig.sent(SEGMENTER_CONTROL, Done)
    return dones, [a for d in dones for a in d.answers]


def results(answers: list[Any], stream: str) -> list[Result]:
    return [a for a in answers if isinstance(a, Result) and a.stream == stream]


def test_a_packet_is_one_model_call_whose_answers_return_inside_its_credit(rig: Rig) -> None:
    rig.turn()  # the first turn announces the index
    (hello,) = rig.sent(SEGMENTER_CONTROL, Ready)
    assert (hello.index, hello.capacity) == (1, rig.cfg.model.max_inflight)
    calls = rig.actor.model._calls  # type: ignore[attr-defined]
    give(rig, (work(1, 0, 0.5), noise(0.5)), (work(2, 1, 0.25, seq=1), noise(0.25)), (work(3, 1, 0.1, seq=2),
                                                                                     noise(0.1)))
    rig.turn()
    assert rig.actor.model._calls == calls + 1  # type: ignore[attr-defined]
    (ack,), answers = answered(rig)
    assert sorted(ack.work_ids) == [1, 2, 3]
    assert [(r.seq, r.output) for r in results(answers, "s-0")] == [(0, {"count": 8000})]
    assert [(r.seq, r.output) for r in results(answers, "s-1")] == [(1, {"count": 4000}), (2, {"count": 1600})]
    assert set(rig.link.sent) <= {SEGMENTER_CONTROL}  # nothing goes to a front on its own
    assert rig.pools["segmenter"].used_slots() == 0  # read and released before the call


@pytest.mark.parametrize(("delay", "max_batch"), [(0.0, 1), (0.02, 8)])
def test_the_slot_asks_for_batches_only_when_its_model_gains_from_them(delay: float, max_batch: int) -> None:
    """A batch runs on one actor, its pieces one after another: a model with no cost per call
    takes one piece at a time, so waiting pieces spread over the actors as a pool's would."""
    r = make(delay=delay)
    try:
        r.turn()
        (hello,) = r.sent(SEGMENTER_CONTROL, Ready)
        assert hello.max_batch == max_batch == min(max_batch, r.cfg.model.max_batch)
    finally:
        r.close()


def test_answers_and_their_credit_wait_together_while_the_segmenter_cannot_take_them(rig: Rig) -> None:
    rig.turn()
    rig.sent(SEGMENTER_CONTROL)
    rig.link.refusing.add(SEGMENTER_CONTROL)
    give(rig, (work(7, 0, 0.2), noise(0.2)))
    rig.turn(3)
    assert answered(rig) == ([], [])
    rig.link.refusing.clear()
    rig.turn()
    dones, answers = answered(rig)
    assert [d.work_ids for d in dones] == [[7]] and [r.seq for r in results(answers, "s-0")] == [0]


def test_the_slot_is_announced_again_every_second_by_the_clock(rig: Rig) -> None:
    rig.turn()
    assert len(rig.sent(SEGMENTER_CONTROL, Ready)) == 1
    rig.clock.advance(READY_EVERY_S / 2)
    rig.turn()
    assert rig.sent(SEGMENTER_CONTROL, Ready) == []
    rig.clock.advance(READY_EVERY_S / 2)
    rig.turn()
    assert len(rig.sent(SEGMENTER_CONTROL, Ready)) == 1


def test_a_failing_model_answers_each_item_with_an_error_naming_its_region() -> None:
    rig = make(failure_rate=1.0)
    try:
        give(rig, (work(1, 0, 0.5), noise(0.5)))
        rig.turn()
        dones, answers = answered(rig)
        (r,) = results(answers, "s-0")
        assert r.output is None and r.error == "inference failed for 0.00-0.50: fake model failure (failure_rate)"
        assert [d.work_ids for d in dones] == [[1]]
    finally:
        rig.close()


def test_a_packet_whose_buffer_was_reclaimed_is_acknowledged_and_not_run(rig: Rig) -> None:
    give(rig, (work(1, 0, 0.5), noise(0.5)))
    rig.pools["segmenter"].reclaim()  # the segmenter restarted: its allocations are gone
    rig.turn()
    dones, answers = answered(rig)
    assert answers == [] and [d.work_ids for d in dones] == [[1]]


def restore(work_id: int, sample: int, finals: int = 0, state: dict[str, Any] | None = None, channel: int = 0,
            channels: int = 1, stream: str = "s-0") -> Restore:
    return Restore(work_id=work_id, stream=stream, front=0, channel=channel, channels=channels, sample=sample,
                   finals=finals, state=state)


def feed(work_id: int, start: int, end: int, interim: bool = False, channel: int = 0, channels: int = 1,
         stream: str = "s-0") -> Feed:
    return Feed(work_id=work_id, stream=stream, front=0, channel=channel, channels=channels, start=start, end=end,
                interim=interim)


def close(work_id: int, sample: int, channel: int = 0, channels: int = 1, stream: str = "s-0") -> CloseChannel:
    return CloseChannel(work_id=work_id, stream=stream, front=0, channel=channel, channels=channels, sample=sample,
                        interim=False)


def test_a_sequential_stream_runs_in_order_through_the_stateful_model_with_checkpoints_at_its_finals() -> None:
    rig = make(final_every_s=1.0)
    try:
        x = noise(2.5)
        pieces = [(0, 7000), (7000, 20000), (20000, 40000)]  # cut anywhere: finals at 16000 and 32000
        rig.put("model-1", restore(1, 0))
        rig.turn()
        for k, (a, b) in enumerate(pieces):
            rig.put("model-1", feed(2 + k, a, b, interim=True), audio=[x[a:b]], pool="segmenter")
            rig.turn()
        rig.put("model-1", close(9, 40000))
        rig.turn()
        dones, told = answered(rig)
        finals = [r for r in told if isinstance(r, Result) and r.is_final]
        assert [(r.seq, r.start_time, r.end_time, r.output) for r in finals] == [
            (0, 0.0, 1.0, {"count": 16000, "total": 16000}), (1, 1.0, 2.0, {"count": 16000, "total": 32000}),
            (2, 2.0, 2.5, {"count": 8000, "total": 40000})]
        interims = [r for r in told if isinstance(r, Result) and r.is_final is False]
        assert [(r.seq, r.end_time) for r in interims] == [(0, 7000 / 16000), (1, 1.25), (2, 2.5)]
        (end,) = [m for m in told if isinstance(m, StreamEnd)]
        assert end.results == [3]
        points = [p for d in dones for p in d.points]
        assert [(p.sample, p.finals, p.state) for p in points] == [(20000, 1, {"start": 16000, "total": 20000}),
                                                                   (40000, 2, {"start": 32000, "total": 40000})]
        assert all(isinstance(m.checkpoint, Checkpoint) for m in told if isinstance(m, Progress))
    finally:
        rig.close()


def test_a_restored_state_goes_on_exactly_as_the_undisturbed_one() -> None:
    rig = make(final_every_s=1.0)
    try:
        x = noise(2.5)
        rig.put("model-1", restore(1, 20000, finals=1, state={"start": 16000, "total": 20000}))
        rig.put("model-1", feed(2, 20000, 40000), audio=[x[20000:40000]], pool="segmenter")
        rig.turn(2)
        rig.put("model-1", close(3, 40000))
        rig.turn()
        finals = [(r.seq, r.output) for r in results(answered(rig)[1], "s-0") if r.is_final]
        assert finals == [(1, {"count": 16000, "total": 32000}), (2, {"count": 8000, "total": 40000})]
    finally:
        rig.close()


def test_forget_drops_every_stream_held_and_what_an_earlier_segmenter_still_had_queued() -> None:
    """A new segmenter's first word: the states held for its predecessor go (with pocketsphinx,
    a decoder each), since it rebinds their streams as it likes. Work numbered below its own
    that arrives after it was queued by the predecessor on the other connection, and is
    skipped, as is the predecessor's own `Forget` should it come late."""
    rig = make(final_every_s=1.0)
    try:
        x = noise(1.0)
        rig.put("model-1", restore(1, 0))
        rig.put("model-1", feed(2, 0, 8000), audio=[x[:8000]], pool="segmenter")
        rig.turn(2)
        assert rig.actor.stats()["held"] == 1
        rig.put("model-1", Forget(100))
        rig.turn()
        assert rig.actor.stats()["held"] == 0
        answered(rig)
        rig.put("model-1", feed(3, 8000, 16000), audio=[x[8000:]], pool="segmenter")
        rig.turn()
        assert rig.actor.stats()["held"] == 0 and answered(rig) == ([], [])
        rig.put("model-1", restore(100, 8000, state={"start": 0, "total": 8000}))
        rig.put("model-1", Forget(50))
        rig.turn(2)
        assert rig.actor.stats()["held"] == 1
        assert [d.work_ids for d in answered(rig)[0]] == [[100]]
    finally:
        rig.close()


def test_a_stream_ends_once_every_channel_is_closed_each_with_its_own_finals() -> None:
    """`CloseChannel` ends one channel: its last final comes at once, the stream's end (how many
    finals each channel made) only with the last channel's close."""
    rig = make(final_every_s=1.0)
    try:
        x = noise(1.5)
        for ch, end in ((0, 24000), (1, 8000)):
            rig.put("model-1", restore(10 + ch, 0, channel=ch, channels=2))
            rig.put("model-1", feed(20 + ch, 0, end, channel=ch, channels=2), audio=[x[:end]], pool="segmenter")
        rig.turn(4)
        answered(rig)
        rig.put("model-1", close(30, 24000, channel=0, channels=2))
        rig.turn()
        told = answered(rig)[1]
        assert [(r.channel, r.seq, r.end_time) for r in results(told, "s-0")] == [(0, 1, 1.5)]
        assert not any(isinstance(m, StreamEnd) for m in told) and rig.actor.stats()["held"] == 1
        rig.put("model-1", close(31, 8000, channel=1, channels=2))
        rig.turn()
        told = answered(rig)[1]
        assert [(r.channel, r.seq, r.end_time) for r in results(told, "s-0")] == [(1, 0, 0.5)]
        (end,) = [m for m in told if isinstance(m, StreamEnd)]
        assert end.results == [2, 1] and rig.actor.stats()["held"] == 0
    finally:
        rig.close()


def test_a_drop_lets_the_stream_go_without_a_word_and_leaves_the_others_alone() -> None:
    """`Drop` (its client left): the stream's states go without a close, so no last final and no
    end; it is acknowledged like any item, and the stream beside it goes on."""
    rig = make(final_every_s=1.0)
    try:
        x = noise(1.0)
        for stream in ("s-0", "s-1"):
            rig.put("model-1", restore(1, 0, stream=stream))
            rig.put("model-1", feed(2, 0, 8000, stream=stream), audio=[x[:8000]], pool="segmenter")
        rig.turn(4)
        answered(rig)
        assert rig.actor.stats()["held"] == 2
        rig.put("model-1", Drop(work_id=3, stream="s-0", front=0))
        rig.turn()
        dones, told = answered(rig)
        assert [d.work_ids for d in dones] == [[3]] and told == [] and rig.actor.stats()["held"] == 1
        rig.put("model-1", feed(4, 8000, 16000, stream="s-1"), audio=[x[8000:]], pool="segmenter")
        rig.turn()
        assert [(r.seq, r.output) for r in results(answered(rig)[1], "s-1")] == [(0, {"count": 16000,
                                                                                        "total": 16000})]
    finally:
        rig.close()
