"""Models: one small class each behind `Model`, chosen by `[model] name`."""

from __future__ import annotations

from typing import Any

from actors.models.base import BatchModel, Model, ModelError, run_batch


def build(name: str, settings: dict[str, Any], seed: int | None = None) -> Model:
    """The model called `name`, configured from its `[model.<name>]` table."""
    if name == "fake":
        from actors.models.fake import FakeModel

        return FakeModel(**settings.get("fake", {}), seed=seed)
    raise ValueError(f"unknown model {name!r} (known: fake)")


__all__ = ["BatchModel", "Model", "ModelError", "build", "run_batch"]
