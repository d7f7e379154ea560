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

A shard is one decoder and one segmenter and the fronts they carry (`[actors] shards`; front k
belongs to shard k mod shards): each shard's pools and inboxes are its own, and every shard's
segmenter hands work to every model actor, which answers each on its own control inbox. The
first shard's names are the plain ones (`decoder`, `segmenter`, `segmenter-ctl`), the others
add their index (`decoder-1`).

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
_PER_SHARD = ("decoder", "segmenter")
SEGMENTER_CONTROL = "segmenter-ctl"


@dataclass(frozen=True)
class Place:
    """One actor of the group: a role and its index (for a decoder or a segmenter, its shard's).
    The first shard's decoder and segmenter keep the plain names (`decoder`, `segmenter`): a
    group of one shard reads as it always has."""

    role: str
    index: int = 0

    @property
    def name(self) -> str:
        return self.role if self.role in _PER_SHARD and self.index == 0 else f"{self.role}-{self.index}"


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


def segmenter_control(shard: int) -> str:
    """The inbox where a shard's segmenter hears the model actors (`Ready`, `Done`) and deaths."""
    return SEGMENTER_CONTROL if shard == 0 else f"{SEGMENTER_CONTROL}-{shard}"


def model_inbox(index: int) -> str:
    return f"model-{index}"


class Topology:
    def __init__(self, cfg: Config) -> None:
        self.fronts = cfg.front_count
        self.models = cfg.model_count
        self.placement = cfg.actors.placement
        # A shard without a front would get no sessions; under "shards" placement a shard is a front's process.
        self.shards = self.fronts if self.placement == "shards" else min(cfg.shard_count, self.fronts)
        self._cfg = cfg

    @cached_property
    def places(self) -> list[Place]:
        """Every child, in start order: consumers first, the door last (stop is the reverse)."""
        models = [Place("model", i) for i in range(self.models)]
        stages = [p for k in range(self.shards) for p in (Place("segmenter", k), Place("decoder", k))]
        return models + stages + [Place("front", k) for k in range(self.fronts)]

    @cached_property
    def hosts(self) -> list[Host]:
        """Every process, in start order (stop is the reverse): each actor alone; with
        `placement = "paired"` each shard's decoder and segmenter together, where the segmenter
        would have started (its consumers, the models, are up before it); with "shards" each
        front with its shard's decoder and segmenter, where the front would have started (last)."""
        if self.placement == "split":
            return [Host((p,)) for p in self.places]
        if self.placement == "shards":
            shards = [Host((Place("front", k), Place("decoder", k), Place("segmenter", k))) for k in range(self.fronts)]
            return [Host((p,)) for p in self.places if p.role == "model"] + shards
        out: list[Host] = []
        for p in self.places:
            if p.role not in _PER_SHARD:
                out.append(Host((p,)))
            elif (together := Host((Place("decoder", p.index), Place("segmenter", p.index)))) not in out:
                out.append(together)
        return out

    def shard_of(self, front: int) -> int:
        """The shard whose decoder and segmenter carry front `front`'s sessions."""
        return front % self.shards

    def fronts_of(self, shard: int) -> list[int]:
        return [k for k in range(self.fronts) if self.shard_of(k) == shard]

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
        return (segmenter_control(p.index), p.name) if p.role == "segmenter" else (p.name,)

    def control_inboxes(self, p: Place) -> tuple[str, ...]:
        return (segmenter_control(p.index),) if p.role == "segmenter" else ()

    @staticmethod
    def immediate(dest: str) -> bool:
        """Destinations that take nothing while absent: the segmenter keeps its own record of
        what each model process holds, so nothing may queue for a dead one."""
        return dest.startswith("model-")

    def model_inboxes(self) -> list[str]:
        return [model_inbox(i) for i in range(self.models)]

    def sends_to(self, p: Place) -> list[str]:
        """The inboxes `p` sends to (connected when it starts, not at its first send)."""
        if p.role == "front":
            return [Place("decoder", self.shard_of(p.index)).name]
        if p.role == "model":
            return [segmenter_control(k) for k in range(self.shards)]
        if p.role == "decoder":
            return [Place("segmenter", p.index).name, *(front_inbox(k) for k in self.fronts_of(p.index))]
        # Its own fronts' results, and every front's admission its load: the models are shared.
        return [*(front_inbox(k) for k in range(self.fronts)), *self.model_inboxes()]

    def listeners(self) -> list[str]:
        """The inboxes that hear of every death (`Exited`): those who keep state about others. (A
        decoder keeps its fronts' streams; in a shard's process they die together.)"""
        decoders = [] if self.placement == "shards" else [Place("decoder", k).name for k in range(self.shards)]
        controls = [segmenter_control(k) for k in range(self.shards)]
        return [front_inbox(k) for k in range(self.fronts)] + decoders + controls

    # -- shared memory ---------------------------------------------------------------

    @cached_property
    def pools(self) -> dict[str, PoolSpec]:
        """Every pool of a run, by name. Only the process it is named after allocates in it."""
        p = self._cfg.pools
        out = {front_inbox(k): PoolSpec(front_inbox(k), p.front_slot_bytes, p.front_slots)
               for k in range(self.fronts)}
        for k in range(self.shards):
            decoder, segmenter = Place("decoder", k).name, Place("segmenter", k).name
            out[decoder] = PoolSpec(decoder, p.decoder_slot_bytes, p.decoder_slots)
            out[segmenter] = PoolSpec(segmenter, p.segmenter_slot_bytes, p.segmenter_slots)
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
            return tuple(front_inbox(k) for k in self.fronts_of(p.index))
        if p.role == "segmenter":
            return (Place("decoder", p.index).name,)
        if p.role == "model":
            return tuple(Place("segmenter", k).name for k in range(self.shards))
        return ()

    def reclaimed_at_death(self, h: Host) -> tuple[str, ...]:
        """Pools whose taken slots below the producer's next allocation belong to the process `h`
        once it is dead: the supervisor frees them before the replacement starts. A model's are
        not here: several models read the segmenter's pool, so the segmenter, which knows what
        each one held, takes those back itself."""
        return tuple(dict.fromkeys(n for p in h.places if p.role in ("decoder", "segmenter") for n in self.reads(p)))

    # -- metrics ------------------------------------------------------------------------

    def metrics_port(self, p: Place | None) -> int:
        """`[metrics] base_port` + the process's index (supervisor 0, decoder 1, segmenter 2,
        fronts, models, then the other shards' decoders and segmenters); 0 when base_port is 0
        (ephemeral, published in the actors table)."""
        base = self._cfg.metrics.base_port
        if base == 0:
            return 0
        if p is None:
            return base
        order = [Place("decoder"), Place("segmenter")] + [Place("front", k) for k in range(self.fronts)] \
            + [Place("model", i) for i in range(self.models)] \
            + [Place(role, k) for k in range(1, self.shards) for role in _PER_SHARD]
        return base + 1 + order.index(p)
