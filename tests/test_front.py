"""A front's sessions, tested in one process (`tests/frontrig.py`): the protocol's requests, its
limits, backpressure and replay, against the real pipeline and actors, without a socket.

What needs a real socket (aiohttp's frame limit, TCP pushing back, keepalive, tokens in the
handshake) stays in `test_hostile.py` and the other end-to-end tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streamer.front.front_metrics import AUDIO_FEEDS
from streamer.front.session import Session
from streamer.transport.messages import RouteName

from audio import noise, pcm_bytes, speech
from conversation import Transcript, check_regions_answered, check_simple_counts, start_msg, stream_steps
from frontrig import FrontRig, MemoryWire, Step, front_rig

T = TypeVar("T")


def with_rig(tmp_path: Path, body: Callable[[FrontRig], Awaitable[T]], **overrides: dict[str, Any]) -> T:
    async def run() -> T:
        async with front_rig(tmp_path, **overrides) as rig:
            return await body(rig)

    return asyncio.run(run())


def talk(tmp_path: Path, route: RouteName, steps: list[Step], **overrides: dict[str, Any]) -> Any:
    return with_rig(tmp_path, lambda rig: rig.talk(route, steps), **overrides)


def fmt(**over: Any) -> dict[str, Any]:
    return {"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False,
                                           **over}}


BAD_INPUTS: list[tuple[str, list[Any], int, str]] = [
    ("invalid JSON", ["{not json"], 1007, "invalid JSON"),
    ("JSON that is not an object", ["[1, 2]"], 1007, "invalid request"),
    ("unknown request", [{"request": "dance"}], 1007, "invalid request"),
    ("missing request tag", [{"format": {}}], 1007, "invalid request"),
    ("missing format", [{"request": "start"}], 1007, "invalid request"),
    ("mistyped channels", [fmt(channels="two")], 1007, "invalid request"),
    ("unknown field", [{**fmt(), "colour": "blue"}], 1007, "invalid request"),
    ("bit depth 8", [fmt(bit_depth=8)], 1003, "unsupported format"),
    ("bit depth 24", [fmt(bit_depth=24)], 1003, "unsupported format"),
    ("float with 16 bits", [fmt(is_float=True)], 1003, "unsupported format"),
    ("0 channels", [fmt(channels=0)], 1003, "channels"),
    ("too many channels", [fmt(channels=9)], 1003, "channels"),
    ("sample rate 0", [fmt(sample_rate=0)], 1003, "sample_rate"),
    ("negative sample rate", [fmt(sample_rate=-16000)], 1003, "sample_rate"),
    ("absurd sample rate", [fmt(sample_rate=10**12)], 1003, "sample_rate"),
    ("binary before start", [b"\x00\x01" * 100], 1003, "binary audio before start"),
]


@pytest.mark.parametrize(("steps", "code", "says"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_and_its_close_code(tmp_path: Path, steps: list[Any], code: int,
                                                         says: str) -> None:
    t = talk(tmp_path, "segmented", [*steps, {"request": "stop"}])
    assert t.close_code == code, t
    errors = t.of_type("error")
    assert len(errors) == 1 and says in errors[0]["message"], errors


def test_a_stream_is_answered_whole_through_the_pipeline(tmp_path: Path) -> None:
    t = talk(tmp_path, "simple", stream_steps(noise(2.0)[None, :], 16000, False))
    assert t.close_code == 1000, t.messages[-3:]
    check_simple_counts(t, 0, 32000)


def test_speech_regions_each_get_one_final(tmp_path: Path) -> None:
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning."))
    t = talk(tmp_path, "segmented", stream_steps(s.samples[None, :], 16000, False))
    assert check_regions_answered(t, 0) == (2, 0)


def frames(n: int, seed: int) -> list[bytes]:
    """`n` 20 ms frames of 16 kHz s16 noise: 320 samples, 640 bytes each."""
    return [pcm_bytes(noise(0.02, seed=seed + i)[None, :], False) for i in range(n)]


def counts_per_stream(t: Transcript) -> list[int]:
    """Each stream's simple-route counts added up, in order (a stream's first chunk starts at 0.0)."""
    out: list[int] = []
    for m in t.of_type("segment"):
        if m["start_time"] == 0.0:
            out.append(0)
        out[-1] += m["count"]
    return out


async def say_to_a_waiting_session(session: Session, wire: MemoryWire, steps: list[Step]) -> None:
    """Say each step once the intake has read the one before and the session waits for the
    client with nothing queued: what a live client's pace gives on an idle machine, made
    certain (a loaded machine can leave a paced frame queued behind the session's last turn)."""
    async with asyncio.timeout(30):
        for step in steps:
            while not (wire.incoming.empty() and session.intake.waiting):
                await asyncio.sleep(0.001)
            wire.say_at_once([step])


def test_a_live_clients_frames_go_in_as_they_come_and_keep_their_place_among_its_requests(tmp_path: Path) -> None:
    """A frame read while the session waits for the client is fed at once, from the reading task
    (`Intake`'s `take`), one feed a frame, and the requests around the frames act where the
    client put them: a `stop` right behind a frame ends the stream after it, and the next
    stream's frames count from its own `start`."""
    first, second = frames(50, 0), frames(25, 100)

    async def body(rig: FrontRig) -> tuple[Transcript, int]:
        session, wire = rig.session("simple", [])
        running = asyncio.ensure_future(rig.run(session))
        feeds = AUDIO_FEEDS.value
        await say_to_a_waiting_session(session, wire, [start_msg(1, 16000, False), *first,
                                                       {"request": "stop", "disconnect": False}])
        await say_to_a_waiting_session(session, wire, [start_msg(1, 16000, False), *second,
                                                       {"request": "stop", "disconnect": True}])
        await asyncio.wait_for(running, 30)
        return Transcript(wire.sent, wire.close_code), AUDIO_FEEDS.value - feeds

    t, feeds = with_rig(tmp_path, body)
    assert t.close_code == 1000, t.messages[-3:]
    assert counts_per_stream(t) == [50 * 320, 25 * 320]
    assert feeds == 75, feeds  # one a frame: none waited in the queue for another


def test_frames_that_come_in_one_read_behind_a_request_wait_for_it(tmp_path: Path) -> None:
    """A text request and the frames behind it can come in one read (aiohttp returns the frames
    it parsed from it without waiting). The frames must not overtake the request queued before
    them: audio after a `stop` is refused (1003: no stream), and audio after a `stop` and a new
    `start` is the new stream's. (Found by a hostile review: the intake fed such frames straight
    into the stream being stopped, since the session had not yet woken for the `stop`.)"""

    async def session_then(rig: FrontRig, burst: list[Step]) -> Transcript:
        session, wire = rig.session("simple", [])
        running = asyncio.ensure_future(rig.run(session))
        await wire.say_paced([start_msg(1, 16000, False), *frames(50, 0)], 0.005)
        async with asyncio.timeout(10):  # the session has taken every frame and waits for the client
            while session.stream is None or session.stream.fed_bytes < 50 * 640:
                await asyncio.sleep(0.005)
        wire.say_at_once(burst)
        await asyncio.wait_for(running, 30)
        return Transcript(wire.sent, wire.close_code)

    tail = frames(25, 100)
    t = with_rig(tmp_path, lambda rig: session_then(rig, [{"request": "stop", "disconnect": False},
                                                          start_msg(1, 16000, False), *tail,
                                                          {"request": "stop", "disconnect": True}]))
    assert t.close_code == 1000, t.messages[-3:]
    assert counts_per_stream(t) == [50 * 320, 25 * 320]

    t = with_rig(tmp_path, lambda rig: session_then(rig, [{"request": "stop", "disconnect": False}, *tail[:5]]))
    assert t.close_code == 1003, t.messages[-3:]
    assert counts_per_stream(t) == [50 * 320]


def test_stop_without_a_stream_is_an_error_but_the_session_goes_on(tmp_path: Path) -> None:
    t = talk(tmp_path, "simple", [{"request": "stop", "disconnect": False},
                                  *stream_steps(noise(1.0)[None, :], 16000, False)])
    assert t.close_code == 1000
    assert [e["message"] for e in t.of_type("error")] == ["stop without a running stream"]
    check_simple_counts(t, 0, 16000)


def test_a_second_start_while_streaming_is_refused_and_loses_nothing(tmp_path: Path) -> None:
    steps = stream_steps(noise(2.0)[None, :], 16000, False)
    steps.insert(5, start_msg(2, 48000, True))  # mid-stream, a different format
    t = talk(tmp_path, "simple", steps)
    assert t.close_code == 1000
    assert "start while a stream is running was ignored" in t.of_type("error")[0]["message"]
    check_simple_counts(t, 0, 32000)


@pytest.mark.parametrize("with_start", [True, False])
def test_an_idle_session_is_warned_then_closed(tmp_path: Path, with_start: bool) -> None:
    t = talk(tmp_path, "segmented", [fmt()] if with_start else [], limits={"idle_timeout_s": 0.2})
    assert t.close_code == 1008, t
    assert t.messages[0]["type"] == "warning" and "no audio for 0.1 s" in t.messages[0]["message"], t.messages
    assert "idle timeout" in t.messages[-1]["message"]


def test_a_client_that_reads_nothing_is_closed_after_the_send_timeout(tmp_path: Path) -> None:
    """Results wait for a client that never reads: the session stops reading its audio, then
    closes it 1008, and its audio stays bounded by the stream's in-flight limit meanwhile."""
    async def body(rig: FrontRig) -> tuple[int | None, int]:
        session, wire = rig.session("simple", stream_steps(noise(20.0)[None, :], 16000, False))
        wire.reading.clear()
        async with asyncio.timeout(20):
            await rig.run(session)
        return wire.close_code, wire.incoming.qsize()

    code, unread = with_rig(tmp_path, body, limits={"send_timeout_s": 0.3, "max_outbox": 4})
    assert code == 1008
    assert unread > 0  # the client's audio was held back, not all taken in


@pytest.mark.parametrize("role", ["decoder", "segmenter"])
def test_an_actor_that_raises_mid_packet_is_replaced_and_the_session_notices_nothing(tmp_path: Path,
                                                                                    role: str) -> None:
    """The shard's decoder or segmenter raises in the middle of a packet, outside any stream's
    `contain` (the rest of the packet, taken, is lost with it): the shard replaces it, the front
    plays the stream again from its checkpoint, and the client gets every sample answered once,
    with nothing said of it."""
    async def body(rig: FrontRig) -> tuple[Transcript, int]:
        session, wire = rig.session("simple", stream_steps(noise(6.0)[None, :], 16000, False))
        replays: list[str] = []
        replay = session.replay
        session.replay = lambda why: (replays.append(why), replay(why))[1]  # type: ignore[method-assign]
        old = rig.actor(role)
        calls = 0
        handle = old.on_message

        def on_message(msg: Any, slab: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:  # the stream's third item: its audio is flowing
                raise RuntimeError("a bug outside any stream, mid-packet")
            handle(msg, slab)

        old.contain = lambda item, error: False  # type: ignore[method-assign]  # what no contain takes
        old.on_message = on_message  # type: ignore[method-assign]
        async with asyncio.timeout(20):
            await rig.run(session)
        assert rig.replaced == [rig.actor(role)] and rig.actor(role) is not old
        return Transcript(wire.sent, wire.close_code), len(replays)

    t, replays = with_rig(tmp_path, body)
    assert replays == 1
    assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
    check_simple_counts(t, 0, 96000)
