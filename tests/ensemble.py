"""The segmenter and real model actors in one process, for the sequential route's deaths.

`tests/rig.py` runs one actor; here the segmenter's rig is joined by `ModelActor`s, each on its
own `MemoryLink` and the rig's pools, and the test carries packets between them by hand. So it
decides exactly what each actor has read and run when it is killed (a killed actor is
dropped with whatever it had not answered, and the segmenter hears `Exited`, as from the
supervisor), and the front's own reordering (`StreamOrder`) says what the client would get.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.actors.actor import Env
from streamer.actors.model_actor import ModelActor
from streamer.front.reorder import StreamOrder
from streamer.runtime.topology import SEGMENTER_CONTROL, Place
from streamer.transport.link import MemoryLink
from streamer.transport.messages import (
    NOWHERE,
    Close,
    Exited,
    Failed,
    Frames,
    Open,
    Result,
    StreamEnd,
    Work,
    decode,
)

from rig import Rig

_pids = itertools.count(1000)


class Group:
    def __init__(self, rig: Rig, models: int = 2) -> None:
        self.rig = rig
        self.models: list[ModelActor | None] = [None] * models
        self.links: list[MemoryLink] = [MemoryLink() for _ in range(models)]
        self.orders: dict[str, StreamOrder] = {}
        self.got: dict[str, list[dict[str, Any]]] = {}  # what each client was sent, in order
        self.failed: dict[str, str] = {}
        self.ends: dict[str, list[StreamEnd]] = {}

    # -- the model actors ------------------------------------------------------------------------

    def start(self, index: int) -> int:
        """A new process in `index`: it announces itself (its first turn's `Ready`); its pid."""
        link = self.links[index] = MemoryLink()
        actor = ModelActor(Env(Place("model", index), self.rig.cfg, link, self.rig.pools, self.rig.clock))
        actor.pid = next(_pids)  # one test process, many incarnations: each its own pid, as in life
        self.models[index] = actor
        self.run(index, 0)
        return actor.pid

    def kill(self, index: int) -> None:
        """SIGKILL: what it had not answered dies with it; the supervisor tells the segmenter."""
        actor = self.models[index]
        assert actor is not None
        self.models[index] = None
        self.rig.link.sent.pop(f"model-{index}", None)
        self.rig.put(SEGMENTER_CONTROL, Exited("model", index, actor.pid, "signal SIGKILL"))

    def waiting_on(self, index: int) -> list[Work]:
        """The work the segmenter has sent model-`index` and its process has not read yet."""
        return [w for raw in self.rig.link.sent.get(f"model-{index}", []) for w in decode(raw).items
                if isinstance(w, Work)]

    def deliver(self, index: int) -> int:
        """Carry what the segmenter sent model-`index` into its process's inbox; how many packets."""
        raws = self.rig.link.sent.pop(f"model-{index}", [])
        self.links[index].inboxes[f"model-{index}"].extend(raws)
        return len(raws)

    def run(self, index: int, packets: int = 1, answer: bool = True) -> None:
        """The actor runs `packets` of what it was delivered (one a turn; 0: one idle turn) and its
        answers are carried to the segmenter's control inbox (unless it is to die before they
        leave: `answer=False`)."""
        actor = self.models[index]
        assert actor is not None
        for _ in range(max(packets, 1)):
            actor.turn(0)
        if answer:
            for raw in self.links[index].sent.pop(SEGMENTER_CONTROL, []):
                self.rig.link.inboxes[SEGMENTER_CONTROL].append(raw)

    def step(self, index: int) -> None:
        """One round trip: the segmenter turns, model-`index` runs what it was sent and answers."""
        self.turn()
        self.run(index, self.deliver(index))

    def bound(self, stream: str = "s-1") -> int | None:
        """The model index a sequential stream is bound to (None: none, or it is over)."""
        b = self.rig.actor.dispatcher.sequential.streams.get(stream)  # type: ignore[attr-defined]
        return None if b is None else b.index  # type: ignore[no-any-return]

    def held(self) -> dict[int, int]:
        return {index: len(a.streams.held) for index, a in enumerate(self.models) if a is not None and a.streams}

    # -- the segmenter ---------------------------------------------------------------------------

    def turn(self, times: int = 1) -> None:
        """Turn the segmenter, then hear what it told the front."""
        self.rig.turn(times)
        for item in self.rig.sent("front-0"):
            stream = getattr(item, "stream", None)
            if stream not in self.orders:
                continue
            if isinstance(item, Result):
                self.got[stream] += self.orders[stream].on_result(item)
            elif isinstance(item, StreamEnd):
                self.orders[stream].end = item
                self.ends[stream].append(item)
            elif isinstance(item, Failed):
                self.failed[stream] = item.message

    def settle(self, rounds: int = 200) -> None:
        """Let everything run until nothing moves: the segmenter hands out, the actors answer."""
        for _ in range(rounds):
            self.turn()
            moved = 0
            for index, actor in enumerate(self.models):
                if actor is not None:
                    n = self.deliver(index)
                    if n or self.links[index].inboxes[f"model-{index}"]:
                        self.run(index, n or 1)
                        moved += 1
            if not moved:
                self.turn()
                return
        raise AssertionError("the group never settled")

    def open(self, stream: str, resume: Any = None) -> None:
        self.orders.setdefault(stream, StreamOrder(1))
        self.got.setdefault(stream, [])
        self.ends.setdefault(stream, [])
        self.rig.put("segmenter", Open(stream, 0, "sequential", 1, 16000, 16, False, False, resume=resume))

    def feed(self, stream: str, audio: npt.NDArray[np.float32], step: int = 1600) -> None:
        """The audio in Frames of `step` samples, one packet and one segmenter turn each."""
        for i in range(0, audio.shape[0], step):
            piece = np.ascontiguousarray(audio[i : i + step], np.float32)
            self.rig.put("segmenter", Frames(stream, 1, piece.shape[0], NOWHERE), audio=[piece], pool="decoder")
            self.turn()

    def close(self, stream: str) -> None:
        self.rig.put("segmenter", Close(stream))
        self.turn()

    def finals(self, stream: str) -> list[tuple[float, float, int, int]]:
        """The finals the client got, in order (each once: the front drops what a replay makes again)."""
        return [(m["start_time"], m["end_time"], m["count"], m["total"]) for m in self.got[stream]
                if m["type"] == "segment" and m.get("is_final")]

    def complete(self, stream: str) -> bool:
        return self.orders[stream].complete
