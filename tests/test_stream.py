"""The front's record of one stream for a replay: what it keeps, from which checkpoint, and what
it sends again (no processes: the front's side of the decoder's and segmenter's checkpoints)."""

from __future__ import annotations

from streamer.front.stream import Stream
from streamer.transport.messages import Checkpoint, CutState, Event, Open, Progress, Result, StreamEnd

MONO16 = Open("s-1", 0, "segmented", 1, 16000, 16, False, False)


def progress(time: float, finals: int, at: int) -> Progress:
    return Progress("s-1", time, [finals], Checkpoint(at, [CutState(at, False, finals, 0)]))


def test_bytes_before_the_last_usable_checkpoint_are_forgotten() -> None:
    s = Stream(MONO16)
    chunks = [bytes([k]) * 3200 for k in range(10)]  # 0.1 s each
    for c in chunks:
        s.fed(c)
    assert s.kept_bytes == 32000
    s.on_progress(progress(0.5, 0, 4000))  # nothing emitted before it: usable at once
    assert s.kept_bytes == 32000 - 6400  # whole chunks before byte 8000 go
    opened, again = s.replay()
    assert opened.resume is not None and opened.resume.sample == 4000
    assert b"".join(again) == b"".join(chunks)[8000:]


def test_a_checkpoint_waits_until_every_final_before_it_is_released() -> None:
    s = Stream(MONO16)
    for _ in range(10):
        s.fed(b"\x00" * 3200)
    s.on_progress(progress(1.0, 1, 12000))  # one final before it, not answered yet
    assert s.kept_bytes == 32000 and s.replay()[0].resume == Checkpoint.start(1)
    s.on_result(Result("s-1", 0, 0, 0, 0.1, 0.6, True, output={"count": 1}))
    s.on_progress(progress(1.0, 1, 12000))
    assert s.replay()[0].resume.sample == 12000  # type: ignore[union-attr]


def test_a_resampled_stream_keeps_the_resamplers_preroll() -> None:
    s = Stream(Open("s-1", 0, "simple", 2, 44100, 16, False, False))
    for _ in range(20):
        s.fed(b"\x00" * 4 * 4410)  # 0.1 s of stereo s16
    s.on_progress(Progress("s-1", 1.0, [0, 0], Checkpoint(16000, [CutState(16000, False, 0, 0)] * 2)))
    first, preroll = Checkpoint(16000, []).input_frames(44100)
    assert (first, preroll) == (44100, 2205)
    assert sum(len(c) for c in s.replay()[1]) == 20 * 4 * 4410 - (first - preroll) * 4


def test_a_replay_pins_the_events_the_client_was_told_of_since_its_checkpoint() -> None:
    s = Stream(MONO16)
    s.fed(b"\x00" * 64000)
    s.on_event(Event("s-1", 0, "active", 0.5, 0))
    s.on_event(Event("s-1", 0, "inactive", 1.0, 1))
    s.on_event(Event("s-1", 0, "inactive", 1.0, 1))  # a repeat: told once
    s.on_result(Result("s-1", 0, 0, 2, 0.5, 1.0, True, output={"count": 8000}))
    s.on_event(Event("s-1", 0, "active", 1.5, 2))
    opened, _ = s.replay()
    assert opened.gen == 1 and opened.resume is not None
    assert opened.resume.channels[0].pins == [8000, 16000, 24000]  # from the stream's start
    s.on_progress(Progress("s-1", 1.2, [1], Checkpoint(19200, [CutState(19200, False, 1, 2)]), gen=1))
    opened, _ = s.replay()
    assert opened.gen == 2 and opened.resume is not None
    assert opened.resume.channels[0] == CutState(19200, False, 1, 2, pins=[24000])  # after the checkpoint only


def test_after_a_replay_only_the_new_runs_word_counts() -> None:
    """A dead run's late words (left in a queue, or made from audio a live segmenter had before the
    replay came) were not pinned in the replay, which may decide otherwise: they are dropped."""
    s = Stream(MONO16)
    s.on_event(Event("s-1", 0, "active", 0.5, 0))
    s.on_end(StreamEnd("s-1", [1], [2]))
    s.replay()
    late = [Event("s-1", 0, "inactive", 1.0, 1), Result("s-1", 0, 0, 2, 0.5, 1.0, True, output={}),
            Progress("s-1", 1.0, [1], Checkpoint(16000, [CutState(16000, False, 1, 2)])), StreamEnd("s-1", [1], [2])]
    assert all(s.superseded(m) for m in late)
    assert s.order.end is None  # the replay's run ends itself
    assert not s.superseded(Event("s-1", 0, "inactive", 0.98, 1, gen=1))
    sequential = Stream(Open("s-2", 0, "sequential", 1, 16000, 16, False, False))
    sequential.replay()
    assert not sequential.superseded(Result("s-2", 0, 0, 0, 0.0, 2.0, True, output={}))  # its model's own account
