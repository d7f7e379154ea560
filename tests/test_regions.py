"""The segmenter's rules on real speech: regions where the speech is, nothing for clicks."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from streamer.actors.regions import Activity, FixedChunks, Output, Piece, RegionRules, SpeechRegions
from streamer.transport.messages import CutState

from audio import SENTENCES, noise, speech

RULES = RegionRules()


def run(cutter: SpeechRegions | FixedChunks, x: np.ndarray, step: int = 320, flush: bool = True) -> list[Output]:
    out: list[Output] = []
    for i in range(0, x.shape[0], step):
        out += cutter.feed(x[i : i + step])
    if flush:
        out += cutter.flush()
    return out


def finals(out: list[Output]) -> list[Piece]:
    return [o for o in out if isinstance(o, Piece) and o.is_final]


def test_one_region_per_sentence_within_150ms_of_the_speech() -> None:
    sp = speech(gap_s=1.0)
    out = run(SpeechRegions(RULES, interim=False), sp.samples)
    regions = finals(out)
    assert len(regions) == len(SENTENCES)
    for piece, (lo, hi) in zip(regions, sp.truth, strict=True):
        assert abs(piece.start / 16000 - lo) <= 0.15, (piece.start / 16000, lo)
        assert abs(piece.end / 16000 - hi) <= 0.15, (piece.end / 16000, hi)
        assert piece.audio.shape[0] == piece.end - piece.start


def test_events_and_finals_alternate_in_audio_order() -> None:
    out = run(SpeechRegions(RULES, interim=False), speech(gap_s=0.8).samples)
    kinds = ["final" if isinstance(o, Piece) else o.kind for o in out]
    assert kinds == ["active", "inactive", "final"] * len(SENTENCES)
    times = [o.sample if isinstance(o, Activity) else o.end for o in out]
    assert times == sorted(times)


def test_a_short_click_is_not_a_region() -> None:
    x = np.zeros(32000, np.float32)
    x[16000:17600] = noise(0.1, amp=0.8)  # 100 ms of loud broadband noise
    assert run(SpeechRegions(RULES, interim=False), x) == []


def test_an_open_region_is_closed_on_flush() -> None:
    sp = speech(SENTENCES[:1], lead_s=0.3)
    cut_at = int((sp.truth[0][0] + 1.0) * 16000)  # stop one second into the sentence
    cutter = SpeechRegions(RULES, interim=False)
    before = run(cutter, sp.samples[:cut_at], flush=False)
    assert [o.kind for o in before if isinstance(o, Activity)] == ["active"]
    after = cutter.flush()
    assert [type(o).__name__ for o in after] == ["Activity", "Piece"]
    assert isinstance(after[1], Piece) and after[1].is_final and after[1].end <= cut_at


def test_interim_results_every_half_second_of_speech_then_one_final() -> None:
    sp = speech(SENTENCES[1:2])
    out = run(SpeechRegions(RULES, interim=True), sp.samples)
    pieces = [o for o in out if isinstance(o, Piece)]
    interims, final = pieces[:-1], pieces[-1]
    assert final.is_final and all(p.is_final is False for p in interims)
    duration = (final.end - final.start) / 16000
    assert len(interims) == pytest.approx(duration / 0.5, abs=1)
    assert all(p.start == final.start for p in interims)
    ends = [p.end for p in interims]
    assert [b - a for a, b in zip([final.start, *ends], ends, strict=False)] == [8000] * len(ends)


def test_a_region_longer_than_the_maximum_is_cut() -> None:
    rules = RegionRules(max_segment_s=1.0)
    sp = speech(SENTENCES[1:2])
    regions = finals(run(SpeechRegions(rules, interim=False), sp.samples))
    assert len(regions) >= 2
    assert all(r.end - r.start <= 16000 + 480 for r in regions)


@pytest.mark.parametrize("total", [0, 1, 7999, 8000, 8001, 40000])
def test_fixed_chunks_cover_every_sample_once(total: int) -> None:
    x = noise(total / 16000 + 1e-9)[:total]
    pieces = [o for o in run(FixedChunks(0.5), x, step=777) if isinstance(o, Piece)]
    assert sum(p.end - p.start for p in pieces) == total
    assert [p.start for p in pieces] == list(range(0, total, 8000))
    if pieces:
        np.testing.assert_array_equal(np.concatenate([p.audio for p in pieces]), x)


@pytest.mark.parametrize("voiced_s", [29.7, 29.8, 29.9, 30.0, 30.2])
def test_a_cut_at_the_maximum_inside_the_hangover_ends_the_region_cleanly(voiced_s: float) -> None:
    """Regression: the cut fell inside the hangover, the new region began after the last voiced
    frame, and closing it asked the window for [start, end) with start > end (IndexError, and
    the segmenter died with every stream on the server)."""
    loud = (0.5 * np.sign(np.sin(2 * np.pi * 150 * np.arange(int(voiced_s * 16000)) / 16000))).astype(np.float32)
    x = np.concatenate([np.zeros(8000, np.float32), loud * noise(voiced_s, amp=1.0, seed=3),
                        np.zeros(32000, np.float32)])
    out = run(SpeechRegions(RULES, interim=True), x)
    kinds = [o.kind if isinstance(o, Activity) else ("final" if o.is_final else "interim") for o in out]
    assert kinds.count("active") == kinds.count("inactive") == kinds.count("final") >= 1
    for p in finals(out):
        assert 0 < p.end - p.start <= 30 * 16000 and p.audio.shape[0] == p.end - p.start


def numbered(out: list[Output], finals_before: int, events_before: int) -> tuple[dict[int, Piece], dict[int, Activity]]:
    finals_by: dict[int, Piece] = {}
    events_by: dict[int, Activity] = {}
    f, e = finals_before, events_before
    for o in out:
        if isinstance(o, Activity):
            events_by[e] = o
            e += 1
        elif o.is_final is not False:
            finals_by[f] = o
            f += 1
    return finals_by, events_by


@pytest.mark.parametrize("cut_s", [0.3, 1.7, 2.4, 3.9, 6.05, 8.8])
@pytest.mark.parametrize("earlier", [0, 160, 4000])
def test_a_cutter_resumed_from_its_checkpoint_goes_on_as_the_original(cut_s: float, earlier: int) -> None:
    """What a replacement segmenter does: rebuild each channel from its last checkpoint and the
    audio since (sent again from a point at or before it), then go on as if nothing happened."""
    sp = speech(SENTENCES[:3], gap_s=0.9)
    x = sp.samples
    original = SpeechRegions(RULES, interim=True)
    cut = int(cut_s * 16000)
    before = run(original, x[:cut], flush=False)
    cp = original.checkpoint()
    after = run(original, x[cut:])
    replay_from = max(0, cp.sample - earlier)
    again = SpeechRegions.resume(RULES, True, cp, replay_from)
    redone = run(again, x[replay_from:])
    want_finals, want_events = numbered(before + after, 0, 0)
    got_finals, got_events = numbered(redone, cp.finals, cp.events)
    assert set(got_finals) == {k for k in want_finals if k >= cp.finals}
    assert set(got_events) == {k for k in want_events if k >= cp.events}
    for k, p in got_finals.items():
        assert abs(p.start - want_finals[k].start) <= 480 and abs(p.end - want_finals[k].end) <= 480, k
    for k, e in got_events.items():
        assert e.kind == want_events[k].kind and abs(e.sample - want_events[k].sample) <= 480, k


@pytest.mark.parametrize("cut", [0, 7999, 8000, 12345, 40000])
def test_fixed_chunks_resumed_from_a_checkpoint_count_every_sample_once(cut: int) -> None:
    x = noise(3.3)
    original = FixedChunks(0.5)
    before = [o for o in run(original, x[:cut], step=500, flush=False) if isinstance(o, Piece)]
    cp = original.checkpoint()
    assert cp.finals == len(before) and cp.sample == 8000 * len(before)
    again = FixedChunks.resume(0.5, cp, max(0, cp.sample - 321))
    redone = [o for o in run(again, x[max(0, cp.sample - 321):], step=640) if isinstance(o, Piece)]
    assert sum(p.end - p.start for p in before + redone) == x.shape[0]
    assert [p.start for p in before + redone] == list(range(0, x.shape[0], 8000))


def test_growing_interim_intervals_keep_interim_work_in_proportion_to_the_region() -> None:
    """A stateless model re-runs the region so far for each interim: at a fixed 0.5 s interval an
    utterance of L seconds costs ~L^2 seconds of interims; doubling the interval keeps it under 2 L."""
    long_speech = speech(SENTENCES * 2, gap_s=0.0)  # mostly one long region: no pause as long as the hangover
    costs = {}
    for growth in (1.0, 2.0):
        out = run(SpeechRegions(RegionRules(interim_growth=growth), interim=True), long_speech.samples)
        final = max(finals(out), key=lambda p: p.end - p.start)
        assert final.end - final.start > 10 * 16000
        interims = [p for p in out if isinstance(p, Piece) and p.is_final is False and p.start == final.start]
        costs[growth] = sum(p.end - p.start for p in interims) / (final.end - final.start)
        if growth == 2.0:
            assert [(p.end - p.start) / 16000 for p in interims] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0][: len(interims)]
    assert costs[1.0] > 15 and costs[2.0] < 2.0, costs


def noisy_speech(seed: int, level: float = 0.003) -> np.ndarray:
    """Three sentences over a little background noise (about -50 dBFS): webrtcvad adapts to it."""
    x = speech(SENTENCES[:3], gap_s=0.8).samples
    return (x + np.random.default_rng(seed).normal(0, level, x.shape)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_resumed_cutter_makes_the_events_its_client_was_told_of_where_they_were(seed: int) -> None:
    """A replay's VAD starts afresh at the checkpoint, and in a little noise it decides otherwise
    than the original did (here a region's start moved by up to 0.4 s, an end by 20 ms): a final
    cut so would name a region the client was never told of, beside the `inactive` it was. Given
    the events told since (`pins`), the resumed cutter makes exactly those, and every final
    between them is the region they bound."""
    x = noisy_speech(seed)
    original = SpeechRegions(RULES, interim=True)
    checkpoints: list[tuple[int, CutState, int]] = []  # (fed so far, checkpoint, outputs before it)
    out: list[Output] = []
    for i in range(0, x.shape[0], 1600):
        out += original.feed(x[i : i + 1600])
        checkpoints.append((i + 1600, original.checkpoint(), len(out)))
    out += original.flush()
    told_finals, told_events = numbered(out, 0, 0)
    moved = 0
    for _, cp, _ in checkpoints[::3]:
        events_after = [told_events[k].sample for k in sorted(told_events) if k >= cp.events]
        free = run(SpeechRegions.resume(RULES, True, cp, cp.sample), x[cp.sample :])
        moved += numbered(free, cp.finals, cp.events)[1] != {k: e for k, e in told_events.items() if k >= cp.events}
        pinned = SpeechRegions.resume(RULES, True, msgspec.structs.replace(cp, pins=events_after), cp.sample)
        got_finals, got_events = numbered(run(pinned, x[cp.sample :]), cp.finals, cp.events)
        assert got_events == {k: e for k, e in told_events.items() if k >= cp.events}
        assert {k: (p.start, p.end) for k, p in got_finals.items()} == \
            {k: (p.start, p.end) for k, p in told_finals.items() if k >= cp.finals}
    assert moved  # the VAD alone would have moved some (the case this guards)


def test_after_its_pins_a_resumed_cutter_decides_for_itself() -> None:
    """Pinned up to a region's `active` only, the resumed cutter ends that region where its own
    VAD says, and goes on finding the regions after it."""
    x = noisy_speech(0)
    out = run(SpeechRegions(RULES, interim=False), x)
    actives = [o.sample for o in out if isinstance(o, Activity) and o.kind == "active"]
    cp = CutState(actives[1] - 4800, False, 1, 2, pins=[actives[1]])
    redone = run(SpeechRegions.resume(RULES, False, cp, cp.sample), x[cp.sample :])
    kinds = [(o.kind, o.sample) for o in redone if isinstance(o, Activity)]
    assert kinds[0] == ("active", actives[1]) and [k for k, _ in kinds] == ["active", "inactive"] * 2
    assert [(p.start, p.end) for p in finals(redone)] == [(a, b) for (_, a), (_, b) in zip(kinds[::2], kinds[1::2],
                                                                                         strict=True)]
