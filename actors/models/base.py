"""The one interface every model implements."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class ModelError(Exception):
    """The model could not answer for this audio; the client gets an `error` for it."""


class Model(Protocol):
    def process(self, audio: npt.NDArray[np.float32], is_final: bool | None) -> dict[str, Any]:
        """Run on 16 kHz mono float32 audio; the dict is flattened into the client's result."""
        ...
