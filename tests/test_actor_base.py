"""The actor skeleton's rules, on a small actor of the test's own: one packet per destination per
turn, input held back while output waits (control still read), and the fate of queued work at stop."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest

from streamer.actors.actor import Actor, Slab
from streamer.actors.segmenter import Segmenter
from streamer.runtime.topology import SEGMENTER_CONTROL, Place
from streamer.transport.messages import Abort, Close, Message, Ready

from rig import Rig


class Relay(Actor):
    """Passes every item on to the segmenter; each one takes a second by the rig's clock."""

    role = "decoder"
    stop_drain_s: ClassVar[float] = 2.5

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.handled: list[str] = []
        self.stopped_after: int | None = None

    def on_message(self, msg: Message, slab: Slab | None) -> None:
        assert isinstance(msg, Close)
        self.handled.append(msg.stream)
        self.emit("segmenter", Abort(msg.stream))
        self.clock.advance(1.0)  # type: ignore[attr-defined]

    def on_stop(self) -> None:
        self.stopped_after = len(self.handled)


@pytest.fixture
def relay() -> Iterator[Rig]:
    r = Rig(Relay, Place("decoder"))
    try:
        yield r
    finally:
        r.close()


def test_everything_a_turn_emits_for_one_destination_leaves_as_one_packet(relay: Rig) -> None:
    for k in range(3):
        relay.put("decoder", Close(f"s-{k}"), Close(f"t-{k}"))
    relay.turn()
    (packet,) = relay.packets("segmenter")
    assert [i.stream for i in packet.items] == ["s-0", "t-0", "s-1", "t-1", "s-2", "t-2"]  # type: ignore[union-attr]


def test_stop_handles_what_waits_until_its_deadline_then_drops_and_counts_the_rest(relay: Rig) -> None:
    for k in range(5):
        relay.put("decoder", Close(f"s-{k}"))
    relay.actor.stop()
    actor: Relay = relay.actor  # type: ignore[assignment]
    assert actor.handled == ["s-0", "s-1", "s-2"]  # 2.5 s of drain at 1 s per message: a handler always finishes
    assert actor.dropped_at_stop == 2 and actor.stopped_after == 3
    assert len(relay.sent("segmenter")) == 3  # what was handled still went out


def test_waiting_output_holds_the_data_inbox_but_not_control() -> None:
    rig = Rig(Segmenter, Place("segmenter"))
    try:
        rig.link.refusing.add("front-0")
        rig.turn()  # a Load for front-0 cannot go: the segmenter is held
        rig.put("segmenter", Close("nobody"))
        rig.put(SEGMENTER_CONTROL, Ready(0, 100, 2, 8))
        rig.turn(2)
        assert len(rig.link.inboxes["segmenter"]) == 1  # data: left where it is
        assert rig.actor.dispatcher.live_peers == 1  # type: ignore[attr-defined]  # control: read
        rig.link.refusing.clear()
        rig.turn(2)
        assert len(rig.link.inboxes["segmenter"]) == 0
    finally:
        rig.close()


def test_what_is_emitted_while_a_packet_waits_goes_out_after_it_not_lost(relay: Rig) -> None:
    relay.link.refusing.add("segmenter")
    relay.put("decoder", Close("first"))
    relay.turn()  # packed, refused: waits
    relay.actor.emit("segmenter", Abort("second"))  # e.g. a report from on_idle while held
    relay.turn()
    relay.link.refusing.clear()
    relay.turn(2)
    assert [i.stream for i in relay.sent("segmenter")] == ["first", "second"]
