"""The reference server's stub model, with the same knobs, costing real CPU.

Its cost is burnt on a core (numeric work until the thread's CPU clock has advanced by the
computed time), not slept, so CPU metrics, real-time factors and capacity planning made
with it mean something. `mode = "sleep"` stands in for an I/O-bound model instead.

It has a batch call: `delay` is paid once per call and `constant_factor` per second of audio,
the way a GPU kernel launch or an ONNX session call costs once however many items it takes.
`failure_rate` fails each item on its own; `panic_rate` is drawn per item and kills the
process, batch and all.

It is also a stateful model (the sequential route): a running count. Every `final_every_s`
of a stream's audio is a `Final` with that stretch's `count` and the stream's `total` so
far, at sample positions that do not depend on how the audio was cut, so a run disturbed by
a death can be compared with an undisturbed one exactly; each feed also gives a `Partial`
for the stretch so far. Its state is two numbers (`snapshot`/`restore`).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np

from streamer.actors.models.base import MODEL_RATE, Audio, Final, ModelError, Partial, Said


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
        final_every_s: float = 2.0,
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
        self.final_every = max(1, round(final_every_s * MODEL_RATE))

    @property
    def max_batch(self) -> int:
        """Its batch call saves only the per-call `delay`: without one, pieces go one per call, to
        whichever actor is free, as a pool's would."""
        return 1 << 16 if self.delay > 0 else 1

    def cost(self, samples: int) -> float:
        """Seconds one call on `samples` samples in all will take (without the random parts)."""
        base = self.delay + self.constant_factor * samples / MODEL_RATE
        return base + (self.warmup_penalty if self._calls == 0 else 0.0)

    def process(self, audio: Audio, is_final: bool | None) -> dict[str, Any]:
        out = self.process_batch([(audio, is_final)])[0]
        if isinstance(out, ModelError):
            raise out
        return out

    def process_batch(self, items: list[tuple[Audio, bool | None]]) -> list[dict[str, Any] | ModelError]:
        cost = self.cost(sum(audio.shape[0] for audio, _ in items))
        if self.jitter:
            cost += self._rng.uniform(-self.jitter, self.jitter)
        self._calls += 1
        if self.panic_rate and any(self._rng.random() < self.panic_rate for _ in items):
            os.abort()  # dies like a native crash: SIGABRT, no cleanup, no goodbye
        _spend(max(cost, 0.0), self.mode)
        return [ModelError("fake model failure (failure_rate)")
                if self.failure_rate and self._rng.random() < self.failure_rate
                else {"count": int(audio.shape[0])} for audio, _ in items]


    # -- stateful: a running count ------------------------------------------------------------

    def open(self) -> dict[str, int]:
        return {"start": 0, "total": 0}

    def feed(self, state: dict[str, int], audio: Audio, at: int) -> list[Said]:
        """`state`: where the stretch being counted began, and how many samples were fed in all
        (a replay that fed audio twice, or skipped some, shows in `total`)."""
        out = self.process_batch([(audio, None)])[0]
        if isinstance(out, ModelError):
            raise out
        if state["total"] == 0:
            state["start"] = at
        fed_before, end = state["total"], at + audio.shape[0]
        said: list[Said] = []
        while end - state["start"] >= self.final_every:
            stop = state["start"] + self.final_every
            said.append(Final(state["start"], stop, {"count": self.final_every, "total": fed_before + stop - at}))
            state["start"] = stop
        state["total"] = fed_before + audio.shape[0]
        if end > state["start"]:
            said.append(Partial(state["start"], end, {"count": end - state["start"], "total": state["total"]}))
        return said

    def close(self, state: dict[str, int], at: int) -> list[Said]:
        if at <= state["start"]:
            return []
        return [Final(state["start"], at, {"count": at - state["start"], "total": state["total"]})]

    def snapshot(self, state: dict[str, int]) -> dict[str, int]:
        return dict(state)

    def restore(self, snapshot: dict[str, int]) -> dict[str, int]:
        return dict(snapshot)


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
