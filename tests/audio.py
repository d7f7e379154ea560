"""Real test audio: speech from espeak-ng (resampled by sox), tones and noise from numpy.

Speech comes with its ground truth: where each sentence's sound actually is, measured on
the generated samples, so region boundaries are checked against the audio, not guesses.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech recognition needs careful engineering.",
    "Please call me back tomorrow morning.",
    "Every region gets exactly one final result.",
)


def have_tools() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


@functools.lru_cache(maxsize=64)
def _say(text: str, rate: int) -> npt.NDArray[np.float32]:
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d, "raw.wav"), Path(d, "out.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", str(rate), "-b", "32", "-e", "floating-point", str(out)],
                       check=True)
        samples, got = soundfile.read(out, dtype="float32")
    assert got == rate
    return np.ascontiguousarray(samples, dtype=np.float32)


def sound_extent(x: npt.NDArray[np.float32], rel: float = 0.02) -> tuple[int, int]:
    """First and one-past-last sample louder than `rel` of the peak."""
    loud = np.flatnonzero(np.abs(x) > rel * float(np.abs(x).max()))
    return int(loud[0]), int(loud[-1]) + 1


@dataclass
class Speech:
    samples: npt.NDArray[np.float32]  # mono
    rate: int
    truth: list[tuple[float, float]]  # seconds where each sentence sounds

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.rate


def speech(sentences: tuple[str, ...] = SENTENCES, rate: int = 16000, gap_s: float = 1.0,
           lead_s: float = 0.5) -> Speech:
    """Sentences separated by `gap_s` of silence, with `lead_s` before the first and after the last."""
    parts = [np.zeros(int(lead_s * rate), np.float32)]
    truth: list[tuple[float, float]] = []
    pos = parts[0].shape[0]
    for i, text in enumerate(sentences):
        said = _say(text, rate)
        lo, hi = sound_extent(said)
        truth.append(((pos + lo) / rate, (pos + hi) / rate))
        parts.append(said)
        pos += said.shape[0]
        pad = np.zeros(int((gap_s if i < len(sentences) - 1 else lead_s) * rate), np.float32)
        parts.append(pad)
        pos += pad.shape[0]
    return Speech(np.concatenate(parts), rate, truth)


def tone(seconds: float, rate: int = 16000, freq: float = 440.0, amp: float = 0.3) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, rate: int = 16000, amp: float = 0.3, seed: int = 0) -> npt.NDArray[np.float32]:
    return (np.random.default_rng(seed).uniform(-amp, amp, int(seconds * rate))).astype(np.float32)


def pcm_bytes(channels: npt.NDArray[np.float32], is_float: bool) -> bytes:
    """Interleave (channels x frames) float audio as s16le or f32le."""
    frames = np.ascontiguousarray(channels.T)
    if is_float:
        return frames.astype("<f4").tobytes()
    return (np.clip(frames, -1, 1) * 32767).round().astype("<i2").tobytes()


def model_samples(frames: int, rate: int) -> int:
    """How many 16 kHz samples `frames` at `rate` become: round(frames x 16000 / rate), halves up."""
    return (2 * frames * 16000 + rate) // (2 * rate)
