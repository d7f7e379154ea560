"""The finals queue on its own: channels take turns, each channel's items stay in order, an item
put back is served next, and the oldest wait is known."""

from __future__ import annotations

import numpy as np

from streamer.actors.binding import Item
from streamer.actors.fair import FairQueue
from streamer.transport.messages import Infer


def item(stream: str, channel: int, seq: int, at: float = 0.0) -> Item[Infer]:
    work = Infer(work_id=seq, stream=stream, front=0, channel=channel, seq=seq, events_before=0, start_time=seq * 0.5,
                 end_time=seq * 0.5 + 0.5, is_final=None)
    return Item(work, np.zeros(8000, np.float32), at)


def served(q: FairQueue) -> list[tuple[str, int, int]]:
    out = []
    while q:
        w = q.popleft().work
        out.append((w.stream, w.channel, w.seq))
    return out


def test_a_backlog_does_not_stand_in_front_of_a_stream_that_comes_later() -> None:
    q = FairQueue()
    for seq in range(5):
        q.append(item("upload", 0, seq))
    q.append(item("live", 0, 0))
    q.append(item("live", 0, 1))
    assert served(q) == [("upload", 0, 0), ("live", 0, 0), ("upload", 0, 1), ("live", 0, 1),
                         ("upload", 0, 2), ("upload", 0, 3), ("upload", 0, 4)]


def test_channels_take_turns_and_each_keeps_its_order() -> None:
    q = FairQueue()
    for seq in range(2):
        for ch in range(3):
            q.append(item("s", ch, seq))
    assert served(q) == [("s", 0, 0), ("s", 1, 0), ("s", 2, 0), ("s", 0, 1), ("s", 1, 1), ("s", 2, 1)]


def test_an_item_put_back_is_served_next_and_counts_stay_right() -> None:
    q = FairQueue()
    for seq in range(3):
        q.append(item("a", 0, seq))
        q.append(item("b", 0, seq))
    first = q.popleft()
    assert len(q) == 5
    q.appendleft(first)
    assert len(q) == 6 and q.peek() is first
    q.keep(lambda i: i.work.stream != "b")
    assert len(q) == 3 and served(q) == [("a", 0, 0), ("a", 0, 1), ("a", 0, 2)]
    assert not q and len(q) == 0


def test_the_oldest_wait_is_the_oldest_head_of_the_streams_that_count() -> None:
    q = FairQueue()
    q.append(item("gone", 0, 0, at=1.0))
    q.append(item("open", 0, 0, at=2.0))
    q.append(item("open", 1, 0, at=3.0))
    oldest = q.oldest(lambda stream: stream == "open")
    assert oldest is not None and oldest.queued_at == 2.0
    assert q.oldest(lambda _: False) is None
