"""Cutting one channel's 16 kHz audio into what the model sees.

`SpeechRegions` (segmented route) runs a VAD (`actors/vad.py`: webrtcvad on 30 ms frames, or
Silero on 32 ms) and smooths it:
a region starts once it holds `min_speech_ms` of voiced frames (so a click is not speech;
the start is back-dated to its first voiced frame), and ends after `hangover_ms` of
silence (the end is back-dated to its last voiced frame, then past the quiet tail that
webrtcvad's own overhang keeps calling speech for ~120 ms). Both ends get `pad_ms` of
context. `FixedChunks` (simple route) cuts every sample into equal chunks.

Both are pure: samples in, `Activity` and `Piece` out, in audio order. No I/O here, so the
segmenter's rules are tested without processes.

Checkpoints. A cutter says at any moment from which sample a fresh one could rebuild it
(`checkpoint()`: the start of what it still keeps, whether a region is open there, and how
many finals and events it had emitted before that point). A replacement built with
`resume(cp, replay_from)` and fed the same audio again from `replay_from` emits what the
original would have from there on, with the same numbering. The regions are the same where the
client has already been told of them: the checkpoint of a replay carries those events
(`CutState.pins`) and the resumed cutter makes them where they were. After them it decides
for itself, and its VAD, started afresh, may decide otherwise than the original's would have
(webrtcvad adapts to what it has heard; in clean audio a boundary moves by a frame at most,
in a little background noise by much more). That is what lets a segmenter's death go
unnoticed: the front keeps each stream's audio since its last checkpoint and plays it again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from streamer.actors import vad
from streamer.actors.pcm import MODEL_RATE
from streamer.actors.samples import SampleWindow
from streamer.transport.messages import CutState

BLOCK = MODEL_RATE // 100  # 10 ms, the resolution of the tail trim
TAIL_FLOOR = 0.01  # a tail block quieter than 1% (-40 dB) of the region's peak is not speech
MAX_TAIL_TRIM = MODEL_RATE * 300 // 1000


@dataclass(frozen=True)
class Activity:
    kind: str  # "active" | "inactive"
    sample: int

    @property
    def time(self) -> float:
        return self.sample / MODEL_RATE


@dataclass(frozen=True)
class Piece:
    """Audio for the model: samples [start, end) of the channel."""

    start: int
    end: int
    audio: npt.NDArray[np.float32]
    is_final: bool | None  # None on the simple route (chunks are neither interim nor final)
    voiced_end: int = 0  # a final's last voiced sample (end of its last voiced VAD frame), for latency


Output = Activity | Piece


class Cutter(Protocol):
    def feed(self, samples: npt.NDArray[np.float32]) -> list[Output]: ...
    def flush(self) -> list[Output]: ...
    def checkpoint(self) -> CutState: ...


def _skipped(samples: npt.NDArray[np.float32], skip: int) -> tuple[npt.NDArray[np.float32], int]:
    """Drop the first `skip` samples (audio a replay sends again from before this cutter's own
    checkpoint); returns what is left and how many are still to skip."""
    n = min(skip, samples.shape[0])
    return samples[n:], skip - n


@dataclass(frozen=True)
class RegionRules:
    aggressiveness: int = 2
    min_speech_ms: int = 200
    hangover_ms: int = 450
    pad_ms: int = 30
    max_segment_s: float = 30.0
    interim_interval_s: float = 0.5
    interim_growth: float = 1.0  # each interval this many times the one before (1: a fixed interval)
    vad: str = "webrtc"  # or "silero" (actors/vad.py)


class SpeechRegions:
    def __init__(self, rules: RegionRules, interim: bool) -> None:
        self._vad = vad.make(rules.vad, rules.aggressiveness)
        self._frame = frame = self._vad.frame
        self._min_voiced = -(-rules.min_speech_ms * MODEL_RATE // 1000 // frame)
        self._hangover = rules.hangover_ms * MODEL_RATE // 1000
        self._pad = rules.pad_ms * MODEL_RATE // 1000
        self._max_len = int(rules.max_segment_s * MODEL_RATE)
        self._interim_every = int(rules.interim_interval_s * MODEL_RATE) if interim else 0
        self._growth = max(1.0, rules.interim_growth)
        self._next_interim = self._interim_every  # region length at which the next interim is due
        self._win = SampleWindow()
        self._next_frame = 0  # absolute index of the next frame to classify
        self._candidate: int | None = None  # first voiced sample of a region not yet confirmed
        self._voiced = 0
        self._last_voiced_end = 0
        self._speaking = False
        self._region_start = 0
        self.finals = 0  # emitted so far
        self.events = 0
        self._skip = 0
        self._pins: deque[int] = deque()  # events the client was told of, still to make (`resume`)

    @classmethod
    def resume(cls, rules: RegionRules, interim: bool, cp: CutState, replay_from: int) -> SpeechRegions:
        """A cutter in the state `cp` describes, to be fed the audio again from `replay_from`."""
        c = cls(rules, interim)
        c._win = SampleWindow(start=cp.sample)
        c._next_frame = -(-cp.sample // c._frame) * c._frame  # frames lie on the stream's own grid
        c._skip = cp.sample - replay_from
        c.finals, c.events = cp.finals, cp.events
        if cp.speaking:  # the region open at cp.sample goes on; its `active` is already out
            c._speaking = True
            c._region_start = c._last_voiced_end = cp.sample
        c._pins = deque(cp.pins)
        return c

    def checkpoint(self) -> CutState:
        if self._speaking:
            return CutState(self._region_start, True, self.finals, self.events)
        if self._candidate is not None:
            return CutState(max(self._candidate - self._pad, self._win.start), False, self.finals, self.events)
        return CutState(max(self._next_frame - self._pad, self._win.start), False, self.finals, self.events)

    def feed(self, samples: npt.NDArray[np.float32]) -> list[Output]:
        if self._skip:
            samples, self._skip = _skipped(samples, self._skip)
        self._win.append(samples)
        out: list[Output] = []
        first, frame = self._next_frame, self._frame
        frames = (self._win.end - first) // frame
        if frames:
            for k, voiced in enumerate(self._vad.voiced(self._win.view(first, first + frames * frame))):
                self._step(first + k * frame, voiced, out)
            self._next_frame = first + frames * frame
        self._trim()
        return out

    def flush(self) -> list[Output]:
        out: list[Output] = []
        while self._pins and self._pins[0] <= self._win.end:
            # The original's last `inactive` can lie in the last, partial frame, which no VAD hears.
            self._pinned(self._pins.popleft(), self._win.end, out)
        self._pins.clear()
        if self._speaking:
            self._close(self._voiced_end(), out)
        self._candidate = None
        return out

    def _voiced_end(self) -> int:
        """Where the region's sound ends: the last voiced frame less its quiet tail, plus pad."""
        end = self._last_voiced_end
        audio = np.abs(self._win.get(self._region_start, end))
        floor = TAIL_FLOOR * float(audio.max(initial=0.0))
        limit = max(end - MAX_TAIL_TRIM, self._region_start + BLOCK)
        while end - BLOCK >= limit and audio[end - BLOCK - self._region_start : end - self._region_start].max() < floor:
            end -= BLOCK
        return min(end + self._pad, self._win.end)

    def _step(self, start: int, voiced: bool, out: list[Output]) -> None:
        end = start + self._frame
        if self._pins:
            self._pinned_step(end, voiced, out)
            return
        if voiced:
            if not self._speaking and self._candidate is None:
                self._candidate, self._voiced = start, 0
            self._voiced += 1
            self._last_voiced_end = end
            if not self._speaking and self._voiced >= self._min_voiced:
                assert self._candidate is not None
                self._open(max(self._candidate - self._pad, self._win.start, 0), out)
        elif end - self._last_voiced_end >= self._hangover:
            if self._speaking:
                self._close(self._voiced_end(), out)
            self._candidate = None
        if self._speaking:
            if end - self._region_start >= self._max_len:
                if self._last_voiced_end < end:  # in the hangover: the speech has already ended
                    self._close(self._voiced_end(), out)
                else:  # still speaking: cut here and go on in a new region
                    self._close(end, out)
                    self._open(end, out)
            else:
                self._interim(end, out)

    def _interim(self, end: int, out: list[Output]) -> None:
        if self._interim_every and end - self._region_start >= self._next_interim:
            at = self._region_start + self._next_interim  # exactly at the interval, wherever frames fall
            self._next_interim = max(self._next_interim + self._interim_every,
                                     round(self._next_interim * self._growth))
            out.append(Piece(self._region_start, at, self._win.get(self._region_start, at), False))

    def _pinned_step(self, end: int, voiced: bool, out: list[Output]) -> None:
        """A frame of a replay while events the client was told of lie ahead: they are made where
        they were, as soon as the audio reaches them, whatever this VAD thinks; it decides nothing
        itself until they are all made (nor does the maximum length: the original's cuts are pins)."""
        if voiced:
            self._last_voiced_end = end
        while self._pins and self._pins[0] <= end:
            self._pinned(self._pins.popleft(), end, out)
        if self._speaking:
            self._interim(end, out)

    def _pinned(self, at: int, reached: int, out: list[Output]) -> None:
        if self._speaking:
            self._close(at, out)
        else:
            self._open(at, out)
            # Sound until here, as far as the free run after the pins is concerned: the original
            # heard enough of it to open this region.
            self._last_voiced_end = max(self._last_voiced_end, reached)

    def _open(self, start: int, out: list[Output]) -> None:
        self._speaking = True
        self._region_start = start
        self._next_interim = self._interim_every
        self.events += 1
        out.append(Activity("active", start))

    def _close(self, end: int, out: list[Output]) -> None:
        start = self._region_start
        self.events += 1
        self.finals += 1
        out.append(Activity("inactive", end))
        out.append(Piece(start, end, self._win.get(start, end), True, self._last_voiced_end))
        self._speaking = False
        self._candidate = None
        self._voiced = 0

    def _trim(self) -> None:
        if self._speaking:
            keep = self._region_start
        elif self._candidate is not None:
            keep = self._candidate - self._pad
        else:
            keep = self._next_frame - self._pad
        self._win.discard_before(min(keep, self._next_frame))


class FixedChunks:
    def __init__(self, chunk_s: float) -> None:
        self._size = max(1, round(chunk_s * MODEL_RATE))
        self._win = SampleWindow(self._size * 2)
        self.finals = 0
        self._skip = 0

    @classmethod
    def resume(cls, chunk_s: float, cp: CutState, replay_from: int) -> FixedChunks:
        c = cls(chunk_s)
        c._win = SampleWindow(c._size * 2, start=cp.sample)
        c.finals = cp.finals
        c._skip = cp.sample - replay_from
        return c

    def checkpoint(self) -> CutState:
        """The start of the chunk being filled: every chunk before it is out."""
        return CutState(self._win.start, False, self.finals, 0)

    def feed(self, samples: npt.NDArray[np.float32]) -> list[Output]:
        if self._skip:
            samples, self._skip = _skipped(samples, self._skip)
        self._win.append(samples)
        out: list[Output] = []
        while self._win.end - self._win.start >= self._size:
            start = self._win.start
            out.append(Piece(start, start + self._size, self._win.get(start, start + self._size), None))
            self._win.discard_before(start + self._size)
            self.finals += 1
        return out

    def flush(self) -> list[Output]:
        start, end = self._win.start, self._win.end
        if end == start:
            return []
        piece = Piece(start, end, self._win.get(start, end), None)
        self._win.discard_before(end)
        self.finals += 1
        return [piece]


class Passthrough:
    """The sequential route: every sample goes on as it comes, in order, to a stateful model,
    which finds its own boundaries. Where a replay starts is the model's business (its
    checkpoints); this only keeps the count of samples and skips what a replay sends twice."""

    def __init__(self, start: int = 0, skip: int = 0) -> None:
        self._at = start
        self._skip = skip

    @classmethod
    def resume(cls, cp: CutState, replay_from: int) -> Passthrough:
        return cls(cp.sample, cp.sample - replay_from)

    def checkpoint(self) -> CutState:
        return CutState(self._at, False, 0, 0)

    def feed(self, samples: npt.NDArray[np.float32]) -> list[Output]:
        if self._skip:
            samples, self._skip = _skipped(samples, self._skip)
        if not samples.shape[0]:
            return []
        start, self._at = self._at, self._at + samples.shape[0]
        return [Piece(start, self._at, np.array(samples, np.float32), None)]

    def flush(self) -> list[Output]:
        return []

    @property
    def at(self) -> int:
        return self._at
