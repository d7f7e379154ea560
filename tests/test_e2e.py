"""The whole pipeline through `streamer serve`: real processes, sockets, shared memory, speech."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from audio import SENTENCES, model_samples, noise, speech
from conversation import (
    audio_frames,
    check_segmented_order,
    check_simple_counts,
    converse,
    start_msg,
    stream_steps,
)
from server import Server


def two_channel_speech(rate: int) -> tuple[np.ndarray, list[int]]:
    """Channel 0 says all sentences, channel 1 the last two: (audio, regions per channel)."""
    a = speech(SENTENCES, rate).samples
    b = speech(SENTENCES[2:], rate).samples
    b = np.concatenate([b, np.zeros(a.shape[0] - b.shape[0], np.float32)])
    return np.stack([a, b]), [len(SENTENCES), 2]


@pytest.mark.parametrize("rate", [16000, 44100])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("is_float", [False, True], ids=["s16", "f32"])
def test_simple_route_counts_add_up_to_every_sample(server: Server, rate: int, channels: int,
                                                    is_float: bool) -> None:
    audio, _ = two_channel_speech(rate)
    audio = audio[:channels]
    t = asyncio.run(converse(server.ws("simple"), stream_steps(audio, rate, is_float)))
    assert t.close_code == 1000
    for ch in range(channels):
        check_simple_counts(t, ch, model_samples(audio.shape[1], rate))


@pytest.mark.parametrize("rate", [16000, 44100])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("is_float", [False, True], ids=["s16", "f32"])
def test_segmented_route_one_final_per_region_after_its_inactive(server: Server, rate: int, channels: int,
                                                                 is_float: bool) -> None:
    audio, regions = two_channel_speech(rate)
    t = asyncio.run(converse(server.ws("segmented"), stream_steps(audio[:channels], rate, is_float)))
    assert t.close_code == 1000
    for ch in range(channels):
        check_segmented_order(t, ch)
        assert len(t.finals(ch)) == regions[ch]
        assert all(f["count"] == round((f["end_time"] - f["start_time"]) * 16000) for f in t.finals(ch))


def test_interim_results_come_before_their_final(server: Server) -> None:
    sp = speech(SENTENCES[:2])
    # In real time: audio sent faster leaves every interim of a region waiting at once, and only
    # the newest of them, then the final, is worth a model call (see the next test).
    t = asyncio.run(converse(server.ws("segmented"), stream_steps(sp.samples[None], 16000, False, interim=True),
                             pace_s=0.1))
    check_segmented_order(t, 0)
    interims = [m for m in t.of_type("segment") if m["is_final"] is False]
    assert len(interims) >= 4
    for final in t.finals(0):
        at = t.messages.index(final)
        mine = [i for i, m in enumerate(t.messages) if m in interims and m["start_time"] == final["start_time"]]
        assert mine and max(mine) < at  # every interim of a region before its final
        ends = [t.messages[i]["end_time"] for i in mine]
        # At 0.5, 1, 2, 4 ... s of speech (`interim_interval_s`, `interim_growth`); one the model
        # had not reached when the next came is superseded, so a stall may leave a gap.
        assert ends == sorted(ends) and all(
            any((end - final["start_time"]) == pytest.approx(0.5 * 2**k, abs=0.011) for k in range(8)) for end in ends)


def test_ten_concurrent_sessions_never_see_each_others_results(server: Server) -> None:
    async def one(i: int) -> None:
        if i % 2:
            x = noise(1.0 + 0.37 * i, seed=i)[None]
            t = await converse(server.ws("simple"), stream_steps(x, 16000, bool(i % 4 == 1)))
            check_simple_counts(t, 0, x.shape[1])
        else:
            n = 1 + i % len(SENTENCES)
            x = speech(SENTENCES[:n], gap_s=0.8).samples[None]
            t = await converse(server.ws("segmented"), stream_steps(x, 16000, False))
            check_segmented_order(t, 0)
            assert len(t.finals(0)) == n
        assert t.close_code == 1000

    async def all_of_them() -> None:
        await asyncio.gather(*(one(i) for i in range(10)))

    asyncio.run(all_of_them())


def test_a_second_start_on_the_same_socket_works(server: Server) -> None:
    first = noise(1.3, seed=1)[None]
    second = np.stack([noise(0.7, 22050, seed=2), noise(0.7, 22050, seed=3)])
    steps = [*stream_steps(first, 16000, False, disconnect=False), *stream_steps(second, 22050, True)]
    t = asyncio.run(converse(server.ws("simple"), steps))
    assert t.close_code == 1000
    ch0 = t.of_type("segment", 0)
    # the first stream's chunks, then the second's (its times restart at 0)
    restart = next(i for i, m in enumerate(ch0) if i and m["start_time"] == 0.0)
    assert sum(m["count"] for m in ch0[:restart]) == first.shape[1]
    assert sum(m["count"] for m in ch0[restart:]) == model_samples(second.shape[1], 22050)
    assert sum(m["count"] for m in t.of_type("segment", 1)) == model_samples(second.shape[1], 22050)


def test_frames_split_mid_sample_give_the_same_counts(server: Server) -> None:
    x = noise(2.0, 44100, seed=5)[None]
    data = b"".join(audio_frames(x, False, rate=44100))
    odd = [data[i : i + 333] for i in range(0, len(data), 333)]  # odd sizes split samples
    t = asyncio.run(converse(server.ws("simple"), [start_msg(1, 44100, False), *odd,
                                                    {"request": "stop", "disconnect": True}]))
    check_simple_counts(t, 0, model_samples(x.shape[1], 44100))


def test_health_reports_every_role(server: Server) -> None:
    status, body = server.health()
    assert (status, body) == (200, {"status": "healthy"})
    roles = {a["role"] for a in server.actors() if a["state"] == "running"}
    assert roles == {"front", "decoder", "segmenter", "model"}
