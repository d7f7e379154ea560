"""The decoder actor on its own: packets in from fronts, one packet per turn out to the segmenter."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import numpy as np
import pytest

from streamer.actors.decoder import Decoder
from streamer.actors.pcm import PcmDecoder, expected_frames
from streamer.runtime.topology import Place
from streamer.transport.messages import (
    NOWHERE,
    Abort,
    Checkpoint,
    Close,
    CutState,
    Exited,
    Failed,
    Frames,
    Notice,
    Open,
    Pcm,
    Roster,
    align,
)

from audio import noise, pcm_bytes
from rig import Rig


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(Decoder, Place("decoder"), fronts=2)
    try:
        yield r
    finally:
        r.close()


def opened(stream: str = "s-1", front: int = 0, rate: int = 16000, channels: int = 1, bits: int = 16) -> Open:
    return Open(stream, front, "segmented", channels, rate, bits, bits == 32, False)


def frames_sent(rig: Rig) -> list[tuple[Frames, np.ndarray]]:
    out = []
    for packet in rig.packets("segmenter"):
        for item in packet.items:
            if isinstance(item, Frames):
                out.append((item, rig.read(packet, item.at).reshape(item.channels, item.frames).copy()))
    return out


def test_a_turn_decodes_every_frame_of_a_stream_at_once_and_sends_one_packet(rig: Rig) -> None:
    x = noise(0.3)
    data = pcm_bytes(x[None, :], False)
    pieces = [data[:641], data[641:1300], data[1300:]]  # split mid-sample, as a client may
    rig.put("decoder", opened(), *[Pcm("s-1", NOWHERE) for _ in pieces], audio=[None, *pieces], pool="front-0")
    rig.turn()
    (packet,) = rig.packets("segmenter")
    assert [type(i) for i in packet.items] == [Open, Frames]
    frames = packet.items[1]
    assert isinstance(frames, Frames)
    alone = PcmDecoder(1, 16000, 16, False).feed(data)
    np.testing.assert_array_equal(rig.read(packet, frames.at).reshape(1, -1), alone)
    assert rig.pools["front-0"].used_slots() == 0  # the front's slab is released once read


def test_many_streams_of_one_turn_share_one_packet_and_one_allocation(rig: Rig) -> None:
    items: list[Open | Pcm] = []
    audio: list[bytes | None] = []
    for k in range(5):
        items += [opened(f"s-{k}"), Pcm(f"s-{k}", NOWHERE)]
        audio += [None, pcm_bytes(noise(0.02, seed=k)[None, :], False)]
    rig.put("decoder", *items, audio=audio, pool="front-0")
    rig.turn()
    packets = rig.packets("segmenter")
    assert len(packets) == 1
    assert sum(isinstance(i, Frames) for i in packets[0].items) == 5
    assert packets[0].slab is not None and rig.pools["decoder"].used_slots() == packets[0].slab.nslots


def test_close_sends_the_resampler_tail_and_pins_the_total(rig: Rig) -> None:
    x = noise(1.0, rate=44100)
    data = pcm_bytes(x[None, :], False)
    rig.put("decoder", opened(rate=44100), Pcm("s-1", NOWHERE), audio=[None, data], pool="front-0")
    rig.turn()
    rig.put("decoder", Close("s-1"))
    rig.turn()
    sent = frames_sent(rig)
    assert sum(f.frames for f, _ in sent) == expected_frames(x.shape[0], 44100)
    rig.put("decoder", Pcm("s-1", NOWHERE), audio=[data[:100]], pool="front-0")
    rig.turn()
    assert rig.sent("segmenter") == []  # a late frame of an ended stream goes nowhere


def test_a_stream_ending_mid_sample_is_told_what_was_dropped(rig: Rig) -> None:
    rig.put("decoder", opened(front=1), Pcm("s-1", NOWHERE), audio=[None, b"\x01\x02\x03"], pool="front-1")
    rig.turn()
    rig.put("decoder", Close("s-1"))
    rig.turn()
    (notice,) = rig.sent("front-1")
    assert isinstance(notice, Notice) and "1 bytes" in notice.message
    assert [type(i) for i in rig.sent("segmenter")] == [Open, Frames, Close]


def test_an_unsupported_format_fails_the_stream_at_its_front(rig: Rig) -> None:
    rig.put("decoder", Open("s-1", 1, "segmented", 1, 16000, 24, False, False))
    rig.turn()
    (failed,) = rig.sent("front-1")
    assert isinstance(failed, Failed) and "bit_depth 24" in failed.message
    assert rig.sent("segmenter") == []


def test_reclaimed_audio_stops_the_stream_until_its_replay_rebuilds_it(rig: Rig) -> None:
    x = noise(1.0)
    data = pcm_bytes(x[None, :], False)
    rig.put("decoder", opened())
    rig.turn()
    rig.sent("segmenter")
    rig.put("decoder", Pcm("s-1", NOWHERE), audio=[data[:6400]], pool="front-0")
    rig.pools["front-0"].reclaim()  # a stage died after the front sent it: the front will replay
    rig.put("decoder", Pcm("s-1", NOWHERE), Close("s-1"), audio=[data[6400:12800], None], pool="front-0")
    rig.turn()
    assert rig.sent("segmenter") == [] and rig.sent("front-0") == []  # no hole, no error: waiting
    replay = Open("s-1", 0, "segmented", 1, 16000, 16, False, False, resume=Checkpoint.start(1))
    rig.put("decoder", replay, Pcm("s-1", NOWHERE), Close("s-1"), audio=[None, data, None], pool="front-0")
    rig.turn()
    sent = rig.packets("segmenter")
    items = [i for p in sent for i in p.items]
    assert [type(i) for i in items] == [Open, Frames, Close]
    (packet,) = sent
    np.testing.assert_array_equal(rig.read(packet, items[1].at), PcmDecoder(1, 16000, 16, False).feed(data)[0])  # type: ignore[union-attr]


@pytest.mark.parametrize("rate", [16000, 44100, 48000, 22050, 8000])
def test_a_replay_from_a_checkpoint_gives_the_undisturbed_samples_from_there_on(rig: Rig, rate: int) -> None:
    """What a replay needs from the decoder: from the checkpoint's sample on, the same number of
    samples at the same places, nearly the same values (the resampler starts 50 ms early)."""
    x = noise(3.0, rate=rate, amp=0.5)
    data = pcm_bytes(x[None, :], False)
    whole = PcmDecoder(1, rate, 16, False)
    undisturbed = np.concatenate([whole.feed(data), whole.flush()], axis=1)[0]
    cp = Checkpoint(align(20000, rate), [CutState(align(20000, rate), False, 3, 0)])
    first, preroll = cp.input_frames(rate)
    replay = Open("s-1", 0, "simple", 1, rate, 16, False, False, resume=cp)
    rest = data[(first - preroll) * 2 :]
    rig.put("decoder", replay, Pcm("s-1", NOWHERE), audio=[None, rest], pool="front-0")
    rig.put("decoder", Close("s-1"))
    rig.turn(2)
    got = np.concatenate([a[0] for _, a in frames_sent(rig)])
    assert got.shape[0] == undisturbed.shape[0] - cp.sample
    assert np.max(np.abs(got - undisturbed[cp.sample :])) < (1e-6 if rate == 16000 else 2e-3)


def test_a_dead_front_aborts_its_own_streams_only(rig: Rig) -> None:
    rig.put("decoder", opened("a", front=0), opened("b", front=1), opened("c", front=1))
    rig.turn()
    rig.sent("segmenter")
    rig.put("decoder", Exited("front", 1, 4242, "signal SIGKILL"))
    rig.turn()
    assert sorted(i.stream for i in rig.sent("segmenter", Abort)) == ["b", "c"]
    assert set(rig.actor.streams) == {"a"}  # type: ignore[attr-defined]


def test_a_fronts_roster_ends_its_streams_it_no_longer_has_and_goes_on_to_the_segmenter(rig: Rig) -> None:
    rig.put("decoder", opened("a", front=0), opened("b", front=0), opened("c", front=1))
    rig.turn()
    rig.sent("segmenter")
    roster = Roster(0, ["a"])
    rig.put("decoder", roster)
    rig.turn()
    assert rig.sent("segmenter") == [roster]  # the segmenter keeps what a lost Abort leaves behind
    assert set(rig.actor.streams) == {"a", "c"}  # type: ignore[attr-defined]


def test_a_roster_read_late_forgets_no_stream_opened_after_it_was_listed(rig: Rig) -> None:
    """A dead front's roster can reach the decoder after its replacement's `Open` (ZeroMQ
    interleaves the two connections, and the replacement has the same index): that stream was
    opened after the roster was listed, so the roster says nothing of it."""
    rig.put("decoder", msgspec.structs.replace(opened("a", front=0), opened_at=20.0))
    rig.turn()
    rig.sent("segmenter")
    rig.put("decoder", Roster(0, [], listed_at=19.0))
    rig.turn()
    assert set(rig.actor.streams) == {"a"}  # type: ignore[attr-defined]
    rig.put("decoder", Roster(0, [], listed_at=21.0))
    rig.turn()
    assert set(rig.actor.streams) == set()  # type: ignore[attr-defined]


def test_a_full_segmenter_holds_the_decoders_input_back_without_losing_anything(rig: Rig) -> None:
    data = pcm_bytes(noise(0.1)[None, :], False)
    rig.put("decoder", opened(), Pcm("s-1", NOWHERE), audio=[None, data[:1600]], pool="front-0")
    rig.link.refusing.add("segmenter")
    rig.turn()
    rig.put("decoder", Pcm("s-1", NOWHERE), audio=[data[1600:]], pool="front-0")
    rig.turn(3)
    assert rig.sent("segmenter") == [] and len(rig.link.inboxes["decoder"]) == 1  # held: not read
    rig.link.refusing.clear()
    rig.turn(2)
    assert sum(f.frames for f, _ in frames_sent(rig)) == 1600


def test_a_stream_whose_decoding_raises_fails_alone_and_the_others_go_on(rig: Rig) -> None:
    rig.put("decoder", opened("good"))
    # More channels than the front would let through: the resampler raises on them.
    rig.put("decoder", Open("bad", 1, "segmented", 100_000, 44100, 16, False, False))
    rig.turn()
    data = pcm_bytes(noise(0.1)[None, :], False)
    rig.put("decoder", Pcm("good", NOWHERE), Pcm("bad", NOWHERE), audio=[data, data], pool="front-0")
    rig.turn()
    (failed,) = rig.sent("front-1", Failed)
    assert failed.stream == "bad" and failed.message == "internal error: ValueError"
    assert sum(f.frames for f, _ in frames_sent(rig)) == 1600


def test_a_stream_whose_tail_raises_at_close_fails_alone_and_the_others_close(rig: Rig) -> None:
    """Decoding a stream's last bytes at its `Close` is its handling too: an error there fails that
    stream, not the process (whose replacement would be handed the same `Close` in its replay)."""
    data = pcm_bytes(noise(0.1)[None, :], False)
    rig.put("decoder", opened("bad"), opened("good", front=1), Pcm("bad", NOWHERE), Pcm("good", NOWHERE),
            audio=[None, None, data, data], pool="front-0")
    rig.turn()

    def broken() -> np.ndarray:
        raise RuntimeError("a bug in the resampler's tail")

    rig.actor.streams["bad"].pcm.flush = broken  # type: ignore[attr-defined,method-assign]
    rig.put("decoder", Close("bad"), Close("good"))
    rig.turn()
    (failed,) = rig.sent("front-0", Failed)
    assert failed.stream == "bad" and "internal error in the decoder: RuntimeError" in failed.message
    to_segmenter = rig.sent("segmenter")
    assert [i.stream for i in to_segmenter if isinstance(i, Close)] == ["good"]
    assert [i.stream for i in to_segmenter if isinstance(i, Abort)] == ["bad"]
    assert rig.actor.streams == {}  # type: ignore[attr-defined]


def test_a_burst_larger_than_the_pool_goes_out_in_packets_that_fit_and_nothing_is_lost(rig: Rig) -> None:
    """Twenty clients uploading at full speed, or one 8-channel 8 kHz client sending 1 MiB frames,
    left the decoder one turn of output larger than its whole pool: one allocation that could
    never fit raised outside any stream's handler, the decoder died, and the replay of the same
    audio killed it again until the supervisor gave up. A turn's output now goes as packets of a
    bounded size, each as the pool frees, and the decoder takes no more input meanwhile."""
    channels, rate = 8, 8000
    x = np.stack([noise(3.0, rate, seed=c) for c in range(channels)])  # 384 KB in, 1.5 MiB out (16 kHz f32)
    data = pcm_bytes(x, False)
    capacity = rig.pools["decoder"].spec.capacity
    step = rig.pools["front-0"].spec.capacity // 4
    for k in range(0, len(data), step):
        rig.put("decoder", *([opened(channels=channels, rate=rate)] if k == 0 else []), Pcm("s-1", NOWHERE),
                audio=[*([None] if k == 0 else []), data[k : k + step]], pool="front-0")
    rig.put("decoder", Close("s-1"))
    got: list[np.ndarray] = []
    for _ in range(200):  # the segmenter reads (and frees) what it is sent, turn by turn
        rig.turn()
        for packet in rig.packets("segmenter"):
            for item in packet.items:
                if isinstance(item, Frames):
                    audio = rig.read(packet, item.at).reshape(item.channels, item.frames).copy()
                    assert audio.nbytes <= capacity // 4
                    got.append(audio)
            if packet.slab is not None:
                rig.pools["decoder"].release(packet.slab)
        if not rig.actor.held and not rig.link.inboxes["decoder"]:
            break
    alone = PcmDecoder(channels, rate, 16, False)
    want = np.concatenate([alone.feed(data), alone.flush()], axis=1)
    np.testing.assert_array_equal(np.concatenate(got, axis=1), want)
    assert sum(a.nbytes for a in got) > capacity  # more than the pool ever held at once
