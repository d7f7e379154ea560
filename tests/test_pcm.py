"""The decoder's arithmetic: sample counts, byte-boundary independence, de-interleaving."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.actors.pcm import PcmDecoder, UnsupportedFormat

from audio import model_samples, noise, pcm_bytes, tone


def decode_all(dec: PcmDecoder, data: bytes, step: int) -> np.ndarray:
    parts = [dec.feed(data[i : i + step]) for i in range(0, len(data), step)]
    parts.append(dec.flush())
    return np.concatenate(parts, axis=1)


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("is_float", [False, True])
def test_resampled_count_is_round_of_frames_times_ratio(rate: int, is_float: bool) -> None:
    for frames in (rate, rate * 3 + 7, 12345, 1):
        data = pcm_bytes(tone(frames / rate, rate)[None, :frames], is_float)
        out = decode_all(PcmDecoder(1, rate, 32 if is_float else 16, is_float), data, 3331)
        assert out.shape == (1, model_samples(frames, rate)), (rate, frames)


def test_a_tone_survives_resampling_without_clicks_at_chunk_edges() -> None:
    x = tone(2.0, 44100, freq=440)
    out = decode_all(PcmDecoder(1, 44100, 32, True), pcm_bytes(x[None], True), 441)[0]
    reference = tone(2.0, 16000, freq=440)
    # Compare away from the ends (filter warm-up); a click at any of the 200 chunk edges would show.
    middle = slice(800, out.shape[0] - 800)
    lag = int(np.argmax(np.correlate(out[800:1600], reference[800:1200], "valid")))
    assert lag < 400
    diff = np.abs(np.diff(out[middle]))
    assert diff.max() < 2 * np.pi * 440 / 16000 * 0.3 * 1.05


@pytest.mark.parametrize("rate,is_float,channels", [(16000, False, 1), (44100, False, 2), (22050, True, 2)])
def test_same_stream_split_at_every_byte_boundary_decodes_identically(rate: int, is_float: bool,
                                                                    channels: int) -> None:
    audio = np.stack([noise(0.05, rate, seed=c) for c in range(channels)])
    data = pcm_bytes(audio, is_float)
    whole = decode_all(PcmDecoder(channels, rate, 32 if is_float else 16, is_float), data, len(data))
    for cut in range(1, 24):
        dec = PcmDecoder(channels, rate, 32 if is_float else 16, is_float)
        split = np.concatenate([dec.feed(data[:cut]), dec.feed(data[cut:]), dec.flush()], axis=1)
        np.testing.assert_array_equal(split, whole)
    # ... and every frame split into single bytes
    byte_by_byte = decode_all(PcmDecoder(channels, rate, 32 if is_float else 16, is_float), data, 1)
    np.testing.assert_array_equal(byte_by_byte, whole)


def test_stereo_is_deinterleaved_into_channels() -> None:
    left, right = tone(0.5, 16000, 300, 0.5), tone(0.5, 16000, 1200, 0.25)
    data = pcm_bytes(np.stack([left, right]), True)
    out = decode_all(PcmDecoder(2, 16000, 32, True), data, 1000)
    np.testing.assert_allclose(out[0], left, atol=1e-7)
    np.testing.assert_allclose(out[1], right, atol=1e-7)


def test_s16_is_scaled_to_unit_range() -> None:
    data = np.array([32767, -32768, 0, 16384], "<i2").tobytes()
    out = decode_all(PcmDecoder(1, 16000, 16, False), data, 3)
    np.testing.assert_allclose(out[0], [32767 / 32768, -1.0, 0.0, 0.5])


def test_dangling_half_sample_is_reported() -> None:
    dec = PcmDecoder(1, 16000, 16, False)
    dec.feed(b"\x01\x00\x02")
    assert dec.dangling_bytes == 1


@pytest.mark.parametrize("bits,is_float", [(8, False), (24, False), (16, True), (64, True)])
def test_unsupported_formats_are_refused(bits: int, is_float: bool) -> None:
    with pytest.raises(UnsupportedFormat):
        PcmDecoder(1, 16000, bits, is_float)
