"""Client PCM -> float32 at 16 kHz, one stream at a time.

A client frame may end mid-sample; the remainder is carried into the next frame, so the
same bytes split anywhere decode to the same samples. Resampling is streaming (soxr keeps
filter state per stream and channel), so chunk edges make no clicks, and the total output
is pinned to round(frames x 16000 / rate) when the stream is flushed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from streamer.transport.messages import MODEL_RATE as MODEL_RATE

_S16_SCALE = np.float32(1.0 / 32768.0)

Audio = npt.NDArray[np.float32]


class UnsupportedFormat(ValueError):
    """The stream's format is not one this decoder reads."""


def expected_frames(frames_in: int, rate: int) -> int:
    """round(frames_in x 16000 / rate), halves rounded up, in exact integer arithmetic."""
    return (2 * frames_in * MODEL_RATE + rate) // (2 * rate)


class PcmDecoder:
    """Interleaved s16le or f32le bytes in; channel-major float32 at 16 kHz out."""

    def __init__(self, channels: int, sample_rate: int, bit_depth: int, is_float: bool) -> None:
        if (bit_depth, is_float) == (16, False):
            self._dtype: np.dtype[np.generic] = np.dtype("<i2")
        elif (bit_depth, is_float) == (32, True):
            self._dtype = np.dtype("<f4")
        else:
            raise UnsupportedFormat(f"bit_depth {bit_depth} with is_float {is_float} is not supported")
        if channels < 1 or sample_rate < 1:
            raise UnsupportedFormat("channels and sample_rate must be positive")
        self.channels = channels
        self.sample_rate = sample_rate
        self._frame_bytes = channels * self._dtype.itemsize
        self._carry = b""
        self.frames_in = 0
        self.frames_out = 0
        self._resampler = (
            None
            if sample_rate == MODEL_RATE
            else soxr.ResampleStream(sample_rate, MODEL_RATE, channels, dtype="float32", quality="HQ")
        )
        self._discard = 0  # output frames still to drop (a replay's resampler warm-up)

    @classmethod
    def resume(cls, channels: int, sample_rate: int, bit_depth: int, is_float: bool, first_frame: int,
               preroll: int) -> PcmDecoder:
        """A decoder for a stream played again from input frame `first_frame - preroll`: the
        output of the `preroll` frames only warms the resampler up and is dropped, so the first
        frame out is the one at `first_frame`, and the stream's totals go on as if unbroken.
        Both counts fall on whole output samples (`transport.messages.align`)."""
        d = cls(channels, sample_rate, bit_depth, is_float)
        d.frames_in = first_frame - preroll
        d.frames_out = d.frames_in * MODEL_RATE // sample_rate
        d._discard = preroll * MODEL_RATE // sample_rate
        return d

    def feed(self, data: bytes | memoryview) -> Audio:
        """Decode what whole frames `data` completes; returns (channels, n) float32."""
        if self._carry:
            data = self._carry + data
        whole = len(data) - len(data) % self._frame_bytes
        self._carry = bytes(data[whole:])
        if whole == 0:
            return np.zeros((self.channels, 0), np.float32)
        samples = np.frombuffer(data, self._dtype, whole // self._dtype.itemsize)
        frames = samples.reshape(-1, self.channels)
        self.frames_in += frames.shape[0]
        if self._dtype.kind == "i":  # one numpy call: converts and scales
            floats = np.multiply(frames, _S16_SCALE, dtype=np.float32)
        else:
            floats = frames.astype(np.float32)
        out = floats if self._resampler is None else self._resampler.resample_chunk(floats)
        return self._emit(out)

    def flush(self) -> Audio:
        """End of stream: drain the resampler and pin the total sample count."""
        out = (
            np.zeros((0, self.channels), np.float32)
            if self._resampler is None
            else self._resampler.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)
        )
        want = expected_frames(self.frames_in, self.sample_rate) - self.frames_out
        if out.shape[0] > want:
            out = out[: max(want, 0)]
        elif out.shape[0] < want:
            out = np.concatenate([out, np.zeros((want - out.shape[0], self.channels), np.float32)])
        return self._emit(out)

    @property
    def dangling_bytes(self) -> int:
        """Bytes of an incomplete last frame (dropped at flush: a client bug worth reporting)."""
        return len(self._carry)

    def _emit(self, frames: npt.NDArray[np.float32]) -> Audio:
        self.frames_out += frames.shape[0]
        if self._discard:
            drop = min(self._discard, frames.shape[0])
            self._discard -= drop
            frames = frames[drop:]
        return np.ascontiguousarray(frames.T, dtype=np.float32)
