"""The interfaces a model implements: one call per piece, a batch call, a state per stream.

* **Stateless** (`Model`): `process(audio, is_final)` for one piece of 16 kHz mono float32
  audio (a speech region, its interim so far, a fixed chunk); the dict is flattened into the
  client's result. Used by the segmented and simple routes.
* **Batched** (`BatchModel`): also `process_batch(items)`; a model that gains from doing
  several pieces at once (a GPU kernel launch, an ONNX session call, any fixed cost per call)
  gets every item of a packet in one call (up to `[model] max_batch`, or its own `max_batch`
  attribute if smaller, whatever was waiting: the dispatcher never waits to fill a batch).
  A model without a batch call gets one piece per call, spread over the actors. `run_batch`
  is how the actor calls either.
* **Stateful per stream** (`StreamModel`): `open()` a stream's state, `feed(state, audio, at)`
  every piece of its audio in order (`at`: the piece's first sample in the stream), getting
  `Partial` and `Final` outputs, and `close(state, at)` at its end. The sequential route
  sends a stream's whole audio to one model actor, in order. A `Final` is the model's own
  boundary (an utterance, a chunk of a running computation).

  Checkpoints: after a feed that returned a `Final`, the state must be rebuildable, so that a
  stream whose model actor died goes on elsewhere from there (its audio since is fed again):
  either the model has `snapshot(state) -> dict` and `restore(snapshot) -> state` (a small,
  msgpack-able dict), or its state after such a feed is what `open()` gives (an utterance
  decoder that starts afresh; the Final must then end where the fed audio ends).
  What the server keeps for a replay is the stream's audio since its last checkpoint. A
  model may also say its state is at rest (`at_rest(state) -> bool`: nothing in progress, a
  fresh state would do), which makes a checkpoint too, so a long silence costs no memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from streamer.transport.messages import MODEL_RATE as MODEL_RATE  # every model's audio: mono float32 at this rate

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


def batch_limit(model: Model, configured: int) -> int:
    """Pieces per call a model actor asks for: `[model] max_batch` for a model with a batch call,
    capped by its own `max_batch` attribute if it has one; 1 for any other. Pieces of one
    packet run one after another on one actor, so for a model that gains nothing from a batch
    a packet of several would keep the later ones waiting while another actor could take them."""
    if not isinstance(model, BatchModel):
        return 1
    return max(1, min(configured, getattr(model, "max_batch", configured)))


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


@dataclass(frozen=True)
class Partial:
    """What a stateful model says so far about samples [start, end) of its stream: an interim result."""

    start: int
    end: int
    output: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Final:
    """A stateful model's settled result for samples [start, end) of its stream."""

    start: int
    end: int
    output: dict[str, Any] = field(default_factory=dict)


Said = Partial | Final


@runtime_checkable
class StreamModel(Protocol):
    def open(self) -> Any:
        """A fresh state for a new stream (or one starting again from scratch)."""
        ...

    def feed(self, state: Any, audio: Audio, at: int) -> list[Said]:
        """The stream's next piece of audio (its first sample is sample `at` of the stream)."""
        ...

    def close(self, state: Any, at: int) -> list[Said]:
        """The stream ended at sample `at`: whatever is still open becomes final."""
        ...


@runtime_checkable
class Snapshots(Protocol):
    def snapshot(self, state: Any) -> dict[str, Any]: ...
    def restore(self, snapshot: dict[str, Any]) -> Any: ...
