"""Voice activity detection, frame by frame: webrtcvad (the default) or Silero VAD.

Both say, for each frame of 16 kHz float32 audio, speech or not; `actors/regions.py` turns
the decisions into regions with the same rules either way. A detector keeps state per stream
(webrtcvad adapts to the noise it has heard; Silero is a recurrent network), so every
channel of every stream has its own.

* `webrtc`: 30 ms frames, `[segmenter] vad_aggressiveness` 0..3. About 5 us a frame.
* `silero`: 32 ms frames (512 samples) through the ONNX file the `silero-vad` package ships,
  run by onnxruntime on one thread, without importing torch (install the package with
  `pip install --no-deps silero-vad`; the Makefile does). Speech when the network's
  probability is at least `threshold` (0.5).
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import webrtcvad

from streamer.transport.messages import MODEL_RATE as RATE  # the VAD hears what the models hear


class Vad(Protocol):
    frame: int  # samples per decision

    def voiced(self, audio: npt.NDArray[np.float32]) -> list[bool]:
        """One decision per frame of `audio` (a whole number of frames), in order."""
        ...


class WebRtc:
    frame = RATE * 30 // 1000

    def __init__(self, aggressiveness: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)

    def voiced(self, audio: npt.NDArray[np.float32]) -> list[bool]:
        # One conversion for every frame at once: numpy's per-call cost, paid per 30 ms frame,
        # was most of the segmenter's time. Three ufuncs in place, not `np.clip`, whose Python
        # wrappers cost twice the conversion itself at a frame's size (10 against 4.5 us).
        scaled = np.multiply(audio, 32767.0, dtype=np.float32)
        np.minimum(scaled, 32767.0, out=scaled)
        np.maximum(scaled, -32767.0, out=scaled)
        raw = scaled.astype("<i2").tobytes()
        step = 2 * self.frame
        return [self._vad.is_speech(raw[k : k + step], RATE) for k in range(0, len(raw), step)]


class Silero:
    frame = 512
    context = 64

    def __init__(self, threshold: float = 0.5) -> None:
        self._session = _silero_session()
        self._threshold = threshold
        self._state = np.zeros((2, 1, 128), np.float32)
        self._last = np.zeros(self.context, np.float32)
        self._sr = np.array(RATE, np.int64)

    def voiced(self, audio: npt.NDArray[np.float32]) -> list[bool]:
        out = []
        for k in range(0, audio.shape[0], self.frame):
            chunk = audio[k : k + self.frame]
            x = np.concatenate([self._last, chunk])[None, :].astype(np.float32)
            prob, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
            self._last = chunk[-self.context :]
            out.append(float(prob[0][0]) >= self._threshold)
        return out


def silero_model_path() -> Path:
    """The ONNX file inside the installed `silero-vad` package, found without importing it (its
    `__init__` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError('[segmenter] vad = "silero" needs the silero-vad package: pip install --no-deps silero-vad')
    return Path(next(iter(spec.submodule_search_locations)), "data", "silero_vad.onnx")


@cache
def _silero_session() -> Any:
    """One onnxruntime session per process, on one thread: the streams take turns."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(silero_model_path()), sess_options=opts,
                                        providers=["CPUExecutionProvider"])


def make(kind: str, aggressiveness: int) -> Vad:
    if kind == "webrtc":
        return WebRtc(aggressiveness)
    if kind == "silero":
        return Silero()
    raise ValueError(f"[segmenter] vad must be 'webrtc' or 'silero', not {kind!r}")
