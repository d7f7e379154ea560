"""The shape of a run, declared once.

Which processes exist, in which order they start, which inboxes each binds, which pool each
writes and reads, which pools the supervisor takes back when one dies, who hears of a death,
and where each serves its metrics. The supervisor starts the group from this, every process
builds its sockets and attaches its pools from it, and the tests and benchmarks name the
processes by it. Nothing else spells an endpoint or a role list.

    front-k ──PUSH──> decoder ──PUSH──> segmenter ──PUSH──> model-i
       ^  (pool front-k)       (pool decoder)  │  (pool segmenter)  │
       │                                        │ events, progress,  │
       └────────────────────────────────────────┘ results            │
                       segmenter-ctl <── Ready, Done (+ results) ── model-i

Every front has its own pool and its own inbox: a stream's results go back to the front that
owns it, and a front's death touches only its own sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from streamer.runtime.config import Config
from streamer.transport.messages import MODEL_RATE
from streamer.transport.shm import PoolSpec

ROLES = ("front", "decoder", "segmenter", "model")
_ONE_OF_A_KIND = ("decoder", "segmenter")
SEGMENTER_CONTROL = "segmenter-ctl"


@dataclass(frozen=True)
class Place:
    """One process of the group: a role and its index."""

    role: str
    index: int = 0

    @property
    def name(self) -> str:
        return self.role if self.role in _ONE_OF_A_KIND else f"{self.role}-{self.index}"


def front_inbox(index: int) -> str:
    return f"front-{index}"


def model_inbox(index: int) -> str:
    return f"model-{index}"


class Topology:
    def __init__(self, cfg: Config) -> None:
        self.fronts = cfg.front_count
        self.models = cfg.model_count
        self._cfg = cfg

    @cached_property
    def places(self) -> list[Place]:
        """Every child, in start order: consumers first, the door last (stop is the reverse)."""
        return ([Place("model", i) for i in range(self.models)] + [Place("segmenter"), Place("decoder")]
                + [Place("front", k) for k in range(self.fronts)])

    def inboxes(self, p: Place) -> tuple[str, ...]:
        """Every inbox the process binds, control first: control is read even while the
        process holds its input back."""
        return (SEGMENTER_CONTROL, p.name) if p.role == "segmenter" else (p.name,)

    def control_inboxes(self, p: Place) -> tuple[str, ...]:
        return (SEGMENTER_CONTROL,) if p.role == "segmenter" else ()

    @staticmethod
    def immediate(dest: str) -> bool:
        """Destinations that take nothing while absent: the segmenter keeps its own record of
        what each model process holds, so nothing may queue for a dead one."""
        return dest.startswith("model-")

    def model_inboxes(self) -> list[str]:
        return [model_inbox(i) for i in range(self.models)]

    def sends_to(self, p: Place) -> list[str]:
        """The inboxes `p` sends to (connected when it starts, not at its first send)."""
        fronts = [front_inbox(k) for k in range(self.fronts)]
        return {"front": ["decoder"], "decoder": ["segmenter", *fronts],
                "segmenter": [*fronts, *self.model_inboxes()], "model": [SEGMENTER_CONTROL]}[p.role]

    def listeners(self) -> list[str]:
        """The inboxes that hear of every death (`Exited`): those who keep state about others."""
        return [front_inbox(k) for k in range(self.fronts)] + ["decoder", SEGMENTER_CONTROL]

    # -- shared memory ---------------------------------------------------------------

    @cached_property
    def pools(self) -> dict[str, PoolSpec]:
        """Every pool of a run, by name. Only the process it is named after allocates in it."""
        p = self._cfg.pools
        out = {front_inbox(k): PoolSpec(front_inbox(k), p.front_slot_bytes, p.front_slots)
               for k in range(self.fronts)}
        out["decoder"] = PoolSpec("decoder", p.decoder_slot_bytes, p.decoder_slots)
        out["segmenter"] = PoolSpec("segmenter", p.segmenter_slot_bytes, p.segmenter_slots)
        return out

    def check_pools(self) -> None:
        """Refuse a configuration whose pools cannot carry what its limits let in: the largest
        client frame must fit a front's pool, the longest region the segmenter's (each with room
        for others beside it), or the first such frame or region could never be sent."""
        p, limits = self._cfg.pools, self._cfg.limits
        front = p.front_slot_bytes * p.front_slots
        if front < 2 * limits.max_frame_bytes:
            raise ValueError(f"[pools] front_slot_bytes x front_slots ({front} bytes) must hold twice "
                             f"[limits] max_frame_bytes ({limits.max_frame_bytes})")
        region = int(self._cfg.segmenter.max_segment_s * MODEL_RATE) * 4
        segmenter = p.segmenter_slot_bytes * p.segmenter_slots
        if segmenter < 8 * region:
            raise ValueError(f"[pools] segmenter_slot_bytes x segmenter_slots ({segmenter} bytes) must hold eight "
                             f"regions of [segmenter] max_segment_s ({region} bytes each)")

    def writes(self, p: Place) -> str | None:
        return None if p.role == "model" else p.name

    def reads(self, p: Place) -> tuple[str, ...]:
        if p.role == "decoder":
            return tuple(front_inbox(k) for k in range(self.fronts))
        return {"segmenter": ("decoder",), "model": ("segmenter",)}.get(p.role, ())

    def reclaimed_at_death(self, p: Place) -> tuple[str, ...]:
        """Pools whose taken slots below the producer's next allocation belong to `p` once it is
        dead: the supervisor frees them before the replacement starts. A model's are not here:
        several models read the segmenter's pool, so the segmenter, which knows what each one
        held, takes those back itself."""
        return self.reads(p) if p.role in ("decoder", "segmenter") else ()

    # -- metrics ------------------------------------------------------------------------

    def metrics_port(self, p: Place | None) -> int:
        """`[metrics] base_port` + the process's index (supervisor 0, decoder 1, segmenter 2,
        fronts, then models); 0 when base_port is 0 (ephemeral, published in the actors table)."""
        base = self._cfg.metrics.base_port
        if base == 0:
            return 0
        if p is None:
            return base
        order = [Place("decoder"), Place("segmenter")] + [Place("front", k) for k in range(self.fronts)] \
            + [Place("model", i) for i in range(self.models)]
        return base + 1 + order.index(p)
