"""An example streamer model: how loud each piece of audio is.

A model is any class with `process(audio, is_final) -> dict`: `audio` is 16 kHz mono float32
(a speech region, its interim so far, or a fixed chunk), `is_final` says which (None for a
chunk), and the dict is flattened into the client's result. Raise `ModelError` (or any
exception) to answer that one piece with an error. Optional: `process_batch(items)` for a
model that gains from doing several pieces in one call (see streamer's README).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


class Loudness:
    def __init__(self, floor_db: float = -50.0) -> None:
        self.floor_db = floor_db  # from `[model] options`, e.g. {"floor_db": -40}

    def process(self, audio: npt.NDArray[np.float32], is_final: bool | None) -> dict[str, Any]:
        rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
        db = 20 * np.log10(rms) if rms > 0 else -120.0
        return {"rms_db": round(float(db), 2), "peak": round(float(np.abs(audio).max(initial=0.0)), 4),
                "loud": bool(db > self.floor_db)}
