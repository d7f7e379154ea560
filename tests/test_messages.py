"""The work a model actor is handed, on the wire: each meaning its own type, with only its own fields."""

from __future__ import annotations

import msgspec
import pytest

from streamer.transport.messages import (
    NOWHERE,
    CloseChannel,
    Drop,
    Feed,
    Infer,
    Packet,
    Restore,
    Slice,
    ToModel,
    Work,
    audio_place,
    decode,
    encode,
)

ITEMS: list[ToModel] = [
    Infer(work_id=1, stream="s", front=2, trace="00-t", channel=1, seq=3, events_before=4, start_time=0.5,
          end_time=1.5, is_final=None, at=Slice(8, 64000), attempt=2, gen=1),
    Restore(work_id=2, stream="s", front=2, channel=0, channels=2, sample=16000, finals=1, state={"total": 3}),
    Feed(work_id=3, stream="s", front=2, channel=1, channels=2, start=16000, end=17600, interim=True,
         at=Slice(0, 6400)),
    CloseChannel(work_id=4, stream="s", front=2, channel=1, channels=2, sample=17600, interim=True),
    Drop(work_id=5, stream="s", front=2),
]


def test_every_kind_of_work_crosses_a_packet_as_itself() -> None:
    """One packet format for everything: the items come back as the types they left as."""
    assert decode(encode(Packet(None, list(ITEMS)))).items == ITEMS


@pytest.mark.parametrize("work", ITEMS, ids=lambda w: type(w).__name__)
def test_each_carries_only_its_own_fields(work: Work) -> None:
    common = {"work_id", "stream", "front", "trace"}
    own = {
        Infer: {"channel", "seq", "events_before", "start_time", "end_time", "is_final", "at", "attempt", "gen"},
        Restore: {"channel", "channels", "sample", "finals", "state"},
        Feed: {"channel", "channels", "start", "end", "interim", "at"},
        CloseChannel: {"channel", "channels", "sample", "interim"},
        Drop: set(),
    }[type(work)]
    assert {f.name for f in msgspec.structs.fields(work)} == common | own


def test_only_a_piece_and_a_feed_carry_audio() -> None:
    assert [audio_place(w) for w in ITEMS] == [Slice(8, 64000), None, Slice(0, 6400), None, None]
    assert audio_place(Feed(work_id=6, stream="s", front=0, channel=0, channels=1, start=0, end=0,
                            interim=False)) == NOWHERE  # before `pack` places it
