"""The reference server's stub model, with the same knobs, costing real CPU.

Its cost is burnt on a core (numeric work until the thread's CPU clock has advanced by the
computed time), not slept, so CPU metrics, real-time factors and capacity planning made
with it mean something. `mode = "sleep"` stands in for an I/O-bound model instead.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from actors.models.base import ModelError


class FakeModel:
    def __init__(
        self,
        delay: float = 0.0,
        constant_factor: float = 0.0,
        jitter: float = 0.0,
        failure_rate: float = 0.0,
        panic_rate: float = 0.0,
        warmup_penalty: float = 0.0,
        mode: str = "cpu",
        seed: int | None = None,
    ) -> None:
        if mode not in ("cpu", "sleep"):
            raise ValueError(f"fake model mode must be 'cpu' or 'sleep', not {mode!r}")
        self.delay = delay
        self.constant_factor = constant_factor
        self.jitter = jitter
        self.failure_rate = failure_rate
        self.panic_rate = panic_rate
        self.warmup_penalty = warmup_penalty
        self.mode = mode
        self._rng = random.Random(seed)
        self._calls = 0

    def cost(self, samples: int) -> float:
        """Seconds this call will take (without the random parts)."""
        base = self.delay + self.constant_factor * samples / 16000
        return base + (self.warmup_penalty if self._calls == 0 else 0.0)

    def process(self, audio: npt.NDArray[np.float32], is_final: bool | None) -> dict[str, Any]:
        cost = self.cost(audio.shape[0])
        if self.jitter:
            cost += self._rng.uniform(-self.jitter, self.jitter)
        self._calls += 1
        if self.panic_rate and self._rng.random() < self.panic_rate:
            os.abort()  # dies like a native crash: SIGABRT, no cleanup, no goodbye
        _spend(max(cost, 0.0), self.mode)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            raise ModelError("fake model failure (failure_rate)")
        return {"count": int(audio.shape[0])}


def _spend(seconds: float, mode: str) -> None:
    if seconds <= 0:
        return
    if mode == "sleep":
        time.sleep(seconds)
        return
    deadline = time.thread_time() + seconds
    work = np.linspace(0.0, 1.0, 4096)
    while time.thread_time() < deadline:
        work = np.sin(work) * 1.0000001  # real floating-point work, a few microseconds a turn
