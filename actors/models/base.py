"""The interface every model implements, and the optional batch call.

A model answers `process(audio, is_final)` for one piece of 16 kHz mono float32 audio. A
model that gains from doing several pieces at once (a GPU kernel launch, an ONNX session
call, any fixed cost per call) also defines `process_batch`; the model actor then hands it
every item of a packet in one call (up to `[model] max_batch`, whatever was waiting: the
dispatcher never waits to fill a batch). `run_batch` is how the actor calls either kind.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.float32]


class ModelError(Exception):
    """The model could not answer for this audio; the client gets an `error` for it."""


class Model(Protocol):
    def process(self, audio: Audio, is_final: bool | None) -> dict[str, Any]:
        """Run on 16 kHz mono float32 audio; the dict is flattened into the client's result."""
        ...


@runtime_checkable
class BatchModel(Protocol):
    def process_batch(self, items: list[tuple[Audio, bool | None]]) -> list[dict[str, Any] | ModelError]:
        """Run on several pieces at once; one output (or the error for that piece) per item, in order."""
        ...


def run_batch(model: Model, items: list[tuple[Audio, bool | None]]) -> list[dict[str, Any] | Exception]:
    """One call for the whole packet when the model can, else one call per item. An exception
    costs only its own item."""
    if len(items) > 1 and isinstance(model, BatchModel):
        return list(model.process_batch(items))
    out: list[dict[str, Any] | Exception] = []
    for audio, is_final in items:
        try:
            out.append(model.process(audio, is_final))
        except Exception as e:  # a model bug must cost one item, not the process
            out.append(e)
    return out
