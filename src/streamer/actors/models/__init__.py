"""Models: one small class each behind `Model`, chosen by `[model] name`.

`name` is one of:

* a built-in model: `fake` (configured by `[model.fake]`) or `pocketsphinx` (speech
  recognition with the model its wheel ships; `[model.pocketsphinx]`);
* the name of an entry point in the `streamer.models` group of an installed package (see
  `examples/streamer-loudness`): the class it names is built with `[model] options` as
  keyword arguments;
* `module:Class` (the module importable from the server's environment), built the same way.

The class needs only `process(audio, is_final) -> dict`; see `actors/models/base.py` for the
optional batch call.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from streamer.actors.models.base import (
    BatchModel,
    Final,
    Model,
    ModelError,
    Partial,
    Said,
    Snapshots,
    StreamModel,
    batch_limit,
    run_batch,
)

ENTRY_POINTS = "streamer.models"
BUILT_IN = ("fake", "pocketsphinx")


def build(name: str, settings: dict[str, Any], seed: int | None = None) -> Model:
    """The model called `name`: a built-in configured from its `[model.<name>]` table, or a plug-in
    class built with `[model] options`."""
    if name == "fake":
        from streamer.actors.models.fake import FakeModel

        return FakeModel(**settings.get("fake", {}), seed=seed)
    if name == "pocketsphinx":
        from streamer.actors.models.sphinx import Pocketsphinx

        return Pocketsphinx(**settings.get("pocketsphinx", {}))
    cls = resolve(name)
    model: Model = cls(**settings.get("options", {}))
    if not callable(getattr(model, "process", None)):
        raise TypeError(f"model {name!r} ({cls.__module__}.{cls.__qualname__}) has no process(audio, is_final)")
    return model


def resolve(name: str) -> Any:
    """The class a plug-in model's name stands for."""
    if ":" in name:
        module, _, attr = name.partition(":")
        return getattr(importlib.import_module(module), attr)
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINTS) if ep.name == name]
    if not found:
        raise ValueError(f"unknown model {name!r}: not built in ({', '.join(BUILT_IN)}), not an entry point "
                         f"in {ENTRY_POINTS!r} ({', '.join(installed()) or 'none installed'}), not module:Class")
    return found[0].load()


def installed() -> list[str]:
    """Names of the plug-in models installed packages offer."""
    return sorted(ep.name for ep in metadata.entry_points(group=ENTRY_POINTS))


__all__ = ["BatchModel", "Final", "Model", "ModelError", "Partial", "Said", "Snapshots", "StreamModel",
           "batch_limit", "build", "installed", "resolve", "run_batch"]
