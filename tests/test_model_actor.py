"""The model actor on its own: a packet of work, one model call, results to the fronts, then the credit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from actors.model_actor import READY_EVERY_S, ModelActor
from runtime.topology import SEGMENTER_CONTROL, Place
from transport.messages import Done, Ready, Result, Slice, Work

from audio import noise
from rig import Rig

NOWHERE = Slice(0, 0)


def make(**fake: Any) -> Rig:
    return Rig(ModelActor, Place("model", 1), fronts=2, model={"fake": {"constant_factor": 0.0, **fake}})


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = make()
    try:
        yield r
    finally:
        r.close()


def work(work_id: int, front: int, seconds: float, seq: int = 0, kind: str = "final") -> Work:
    return Work(work_id, f"s-{front}", front, 0, seq, 0, 0.0, seconds, kind, NOWHERE)  # type: ignore[arg-type]


def give(rig: Rig, *items: tuple[Work, np.ndarray]) -> None:
    rig.put("model-1", *[w for w, _ in items], audio=[a for _, a in items], pool="segmenter")


def test_a_packet_is_one_model_call_answered_to_each_front_before_the_credit_returns(rig: Rig) -> None:
    rig.turn()  # the first turn announces the slot
    (hello,) = rig.sent(SEGMENTER_CONTROL, Ready)
    assert (hello.slot, hello.capacity) == (1, rig.cfg.model.max_inflight)
    rig.link.order.clear()
    calls = rig.actor.model._calls  # type: ignore[attr-defined]
    give(rig, (work(1, 0, 0.5), noise(0.5)), (work(2, 1, 0.25, seq=1), noise(0.25)), (work(3, 1, 0.1, seq=2),
                                                                                     noise(0.1)))
    rig.turn()
    assert rig.actor.model._calls == calls + 1  # type: ignore[attr-defined]
    assert [(r.seq, r.output) for r in rig.sent("front-0", Result)] == [(0, {"count": 8000})]
    assert [(r.seq, r.output) for r in rig.sent("front-1", Result)] == [(1, {"count": 4000}), (2, {"count": 1600})]
    (ack,) = rig.sent(SEGMENTER_CONTROL, Done)
    assert sorted(ack.work_ids) == [1, 2, 3]
    assert rig.link.order.index(SEGMENTER_CONTROL) > max(rig.link.order.index("front-0"),
                                                         rig.link.order.index("front-1"))
    assert rig.pools["segmenter"].used_slots() == 0  # read and released before the call


def test_no_credit_returns_while_a_result_cannot_reach_its_front(rig: Rig) -> None:
    rig.turn()
    rig.sent(SEGMENTER_CONTROL)
    rig.link.refusing.add("front-0")
    give(rig, (work(7, 0, 0.2), noise(0.2)))
    rig.turn(3)
    assert rig.sent(SEGMENTER_CONTROL, Done) == []
    rig.link.refusing.clear()
    rig.turn()
    assert [r.seq for r in rig.sent("front-0", Result)] == [0]
    rig.turn()
    assert [d.work_ids for d in rig.sent(SEGMENTER_CONTROL, Done)] == [[7]]


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
        (r,) = rig.sent("front-0", Result)
        assert r.output is None and r.error == "inference failed for 0.00-0.50: fake model failure (failure_rate)"
        assert [d.work_ids for d in rig.sent(SEGMENTER_CONTROL, Done)] == [[1]]
    finally:
        rig.close()


def test_a_packet_whose_buffer_was_reclaimed_is_acknowledged_and_not_run(rig: Rig) -> None:
    give(rig, (work(1, 0, 0.5), noise(0.5)))
    rig.pools["segmenter"].reclaim()  # the segmenter restarted: its allocations are gone
    rig.turn()
    assert rig.sent("front-0", Result) == []
    assert [d.work_ids for d in rig.sent(SEGMENTER_CONTROL, Done)] == [[1]]
