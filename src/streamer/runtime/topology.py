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

What an actor is (a `Place`) does not decide where it runs (a `Host`): `[actors] placement`
maps actors to processes. "split" gives every actor a process of its own; "paired" runs the
decoder and the segmenter in one, where the decoder's packets to the segmenter are handed over
in memory (`local`) and its inbox is not bound at all (docs/placement.md).
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


@dataclass(frozen=True)
class Host:
    """One process of the group and the actors it runs, in the order its loop turns them: a
    producer before its consumer, so what one hands the next in memory is taken in the same turn.
    Most hosts run one actor; its name is then the actor's."""

    places: tuple[Place, ...]

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.places)

    @property
    def first(self) -> Place:
        """The place that speaks for the process where one must (its restart policy, its metrics port)."""
        return self.places[0]

    def __contains__(self, place: object) -> bool:
        return place in self.places


def front_inbox(index: int) -> str:
    return f"front-{index}"


def model_inbox(index: int) -> str:
    return f"model-{index}"


class Topology:
    def __init__(self, cfg: Config) -> None:
        self.fronts = cfg.front_count
        self.models = cfg.model_count
        self.placement = cfg.actors.placement
        self._cfg = cfg

    @cached_property
    def places(self) -> list[Place]:
        """Every child, in start order: consumers first, the door last (stop is the reverse)."""
        return ([Place("model", i) for i in range(self.models)] + [Place("segmenter"), Place("decoder")]
                + [Place("front", k) for k in range(self.fronts)])

    @cached_property
    def hosts(self) -> list[Host]:
        """Every process, in start order (stop is the reverse): each actor alone, or with
        `placement = "paired"` the decoder and the segmenter together, where the segmenter
        would have started (its consumers, the models, are up before it)."""
        if self.placement == "split":
            return [Host((p,)) for p in self.places]
        together = Host((Place("decoder"), Place("segmenter")))
        out: list[Host] = []
        for p in self.places:
            if p not in together:
                out.append(Host((p,)))
            elif together not in out:
                out.append(together)
        return out

    def host_of(self, p: Place) -> Host:
        return next(h for h in self.hosts if p in h)

    def owner(self, inbox: str) -> Place | None:
        """The place that binds `inbox` (None: the supervisor's or nobody's)."""
        return next((p for p in self.places if inbox in self.inboxes(p)), None)

    def local(self, p: Place, dest: str) -> bool:
        """`dest` is an inbox of another actor in `p`'s own process: a send there is a hand-off in
        memory, in the same turn of that process's loop."""
        owner = self.owner(dest)
        return owner is not None and owner != p and owner in self.host_of(p)

    def bound(self, h: Host) -> tuple[str, ...]:
        """The inboxes the process binds: those of its actors that someone outside it sends to
        (another process, or the supervisor's death notices). An inbox only a co-located actor
        sends to is a queue in memory and never a socket."""
        outside = [q for q in self.places if q not in h]
        return tuple(i for p in h.places for i in self.inboxes(p)
                     if i in self.listeners() or any(i in self.sends_to(q) for q in outside))

    def peers(self, h: Host) -> list[str]:
        """The inboxes of other processes that the process sends to."""
        return list(dict.fromkeys(d for p in h.places for d in self.sends_to(p) if not self.local(p, d)))

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

    def reclaimed_at_death(self, h: Host) -> tuple[str, ...]:
        """Pools whose taken slots below the producer's next allocation belong to the process `h`
        once it is dead: the supervisor frees them before the replacement starts. A model's are
        not here: several models read the segmenter's pool, so the segmenter, which knows what
        each one held, takes those back itself."""
        return tuple(dict.fromkeys(n for p in h.places if p.role in ("decoder", "segmenter") for n in self.reads(p)))

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
