"""The front's reorder buffer: audio order per channel, finals after their events, no duplicates."""

from __future__ import annotations

from streamer.front.reorder import ChannelOrder, StreamOrder
from streamer.transport.messages import Event, Result, StreamEnd


def res(seq: int, events_before: int = 0, channel: int = 0, final: bool | None = None) -> Result:
    return Result("s", channel, seq, events_before, seq * 0.5, seq * 0.5 + 0.5, final, output={"count": seq})


def test_results_are_released_in_seq_order_whatever_order_they_finish() -> None:
    ch = ChannelOrder()
    assert ch.result(res(2)) == []
    assert ch.result(res(1)) == []
    assert [r.seq for r in ch.result(res(0))] == [0, 1, 2]
    assert [r.seq for r in ch.result(res(3))] == [3]


def test_a_final_waits_for_the_inactive_that_precedes_it() -> None:
    ch = ChannelOrder()
    ch.event()  # active
    assert ch.result(res(0, events_before=2, final=True)) == []  # inactive not out yet
    assert [r.seq for r in ch.event()] == [0]


def test_events_never_wait_for_slow_results() -> None:
    order = StreamOrder(1)
    assert order.on_result(res(0, events_before=0)) != []
    assert order.on_event(Event("s", 0, "active", 1.0, 0)) == [{"type": "active", "channel": 0, "time": 1.0}]


def test_duplicate_answers_are_dropped() -> None:
    ch = ChannelOrder()
    ch.result(res(1))
    assert ch.result(res(1)) == []
    assert len(ch.result(res(0))) == 2
    assert ch.result(res(0)) == []


def test_channels_are_independent() -> None:
    order = StreamOrder(2)
    assert order.on_result(res(1, channel=1)) == []
    out = order.on_result(res(0, channel=0))
    assert [m["channel"] for m in out] == [0]


def test_stream_is_complete_when_everything_announced_is_out() -> None:
    order = StreamOrder(1)
    order.on_event(Event("s", 0, "active", 0.0, 0))
    order.end = StreamEnd("s", results=[1], events=[2])
    assert not order.complete
    order.on_event(Event("s", 0, "inactive", 1.0, 1))
    assert not order.complete
    rendered = order.on_result(res(0, events_before=2, final=True))
    assert rendered == [{"type": "segment", "channel": 0, "start_time": 0.0, "end_time": 0.5, "is_final": True,
                         "count": 0}]
    assert order.complete


def test_errors_render_as_protocol_errors_naming_their_region() -> None:
    r = Result("s", 0, 0, 0, 1.0, 2.0, True, error="inference failed for 1.00-2.00")
    assert StreamOrder(1).on_result(r) == [{"type": "error", "channel": 0,
                                            "message": "inference failed for 1.00-2.00",
                                            "start_time": 1.0, "end_time": 2.0, "is_final": True}]


def test_events_a_replay_makes_again_are_dropped() -> None:
    order = StreamOrder(1)
    assert order.on_event(Event("s", 0, "active", 1.0, 0)) != []
    assert order.on_event(Event("s", 0, "active", 1.01, 0)) == []  # the replay's copy
    assert order.on_event(Event("s", 0, "inactive", 2.0, 1)) != []
