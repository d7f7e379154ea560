"""Several actors in one process: one loop, one wait, a step for each actor in every turn.

`[actors] placement` says which actors share a process (`Topology.hosts`); this is the body of
such a process. Each actor is the same class it would be alone, on the same skeleton
(`actors/actor.py`); only its link differs (`transport.link.HostLink`): a packet for an actor of
this process is handed over in memory into that actor's `Local` inbox, everything else goes
over the process's one ZeroMQ link, which binds the inboxes other processes send to.

One turn of the process:

* wait for input, on every actor's inboxes at once (sockets and local queues alike), for at
  most the shortest time any actor may wait (`Actor.patience`); not at all while an actor has
  local input it is reading;
* give every actor a `step`, in the host's order (a producer before its consumer: what the
  decoder hands the segmenter in this turn is taken by the segmenter in this turn too). Each
  step takes at most `turn_limit` packets (and `turn_bytes` of audio) per inbox, so one actor's
  backlog costs the other at most one bounded step of waiting, never its turn;
* beat once for the whole process (its heartbeat carries every actor's stats, by place).

An exception that an actor's `contain` does not take ends the process, as it would end that
actor's own process: the supervisor restarts the process, and every actor in it is dead and
reborn at once (docs/placement.md says what that costs). At stop each actor settles its fate
by the skeleton's rule, upstream first, so what the decoder hands over while it drains is
still read by the segmenter's drain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from streamer.actors.actor import POLL_S, Actor, Env, attach_pools
from streamer.runtime.clock import Clock, MonotonicClock
from streamer.runtime.config import Config
from streamer.runtime.process import ChildContext, enter_child
from streamer.runtime.topology import Host, Topology
from streamer.transport.link import HostLink, Link, Local
from streamer.transport.shm import BufferPool

log = logging.getLogger("host")


def actor_class(role: str) -> type[Actor]:
    """The actor class of a role (the front is not an actor)."""
    if role == "decoder":
        from streamer.actors.decoder import Decoder

        return Decoder
    if role == "segmenter":
        from streamer.actors.segmenter import Segmenter

        return Segmenter
    if role == "model":
        from streamer.actors.model_actor import ModelActor

        return ModelActor
    raise ValueError(f"no actor has the role {role!r}")


def local_inboxes(topo: Topology, host: Host, pools: dict[str, BufferPool]) -> Local:
    """The inboxes of `host`'s actors that only its own actors send to, each bounded by the pool
    its sender would have written into: that much audio in flight, as through the pool."""
    bound = topo.bound(host)
    limits: dict[str, int] = {}
    for p in host.places:
        for inbox in topo.inboxes(p):
            if inbox in bound:
                continue
            senders = [q for q in host.places if inbox in topo.sends_to(q)]
            written = [pools[w].capacity for q in senders if (w := topo.writes(q)) and w in pools]
            limits[inbox] = max(written, default=1 << 24)
    return Local(limits)


class Hosted:
    """The actors of one process, turned together."""

    def __init__(self, actors: Sequence[Actor], wire: Link, local: Local, beat: Callable[[], None] = lambda: None,
                 clock: Clock | None = None) -> None:
        self.actors = list(actors)
        self.wire = wire
        self.local = local
        self.beat = beat
        self.clock = clock or MonotonicClock()

    def stats(self) -> dict[str, object]:
        return {a.place.name: a.stats() for a in self.actors}

    def turn(self, timeout_s: float | None = None) -> None:
        reading = [a.reading() for a in self.actors]
        if not any(self.local.waiting(r) for r in reading):
            remote = list(dict.fromkeys(i for r in reading for i in r if i not in self.local))
            patience = min((a.patience() for a in self.actors), default=POLL_S)
            self.wire.wait(remote, patience if timeout_s is None else timeout_s)
        for actor in self.actors:
            # Read again: the step before may have filled this actor's local inbox, or freed room
            # in it for the one before (whose output is then retried in its next step).
            actor.step(actor.reading())
        self.beat()

    def run(self, stopping: Callable[[], bool]) -> None:
        for actor in self.actors:
            actor.on_start()
        while not stopping():
            self.turn()
        self.stop()

    def stop(self) -> None:
        for actor in self.actors:
            actor.stop()


def build(topo: Topology, host: Host, cfg: Config, wire: Link, pools: dict[str, BufferPool],
          clock: Clock | None = None, **env: object) -> Hosted:
    """The actors of `host` on `wire` and `pools` (a test passes a `MemoryLink` and its own)."""
    local = local_inboxes(topo, host, pools)
    link = HostLink(wire, local)
    clock = clock or MonotonicClock()
    actors = [actor_class(p.role)(Env(p, cfg, link, pools, clock, **env))  # type: ignore[arg-type]
              for p in host.places]
    return Hosted(actors, wire, local, clock=clock)


def run_host(ctx: ChildContext) -> None:
    """The body of a process that runs several actors: set up, serve until SIGTERM, stop."""
    from streamer.transport.sockets import ZmqLink

    enter_child(ctx)
    cfg = ctx.cfg()
    topo = Topology(cfg)
    host = Host(ctx.hosted)
    pools: dict[str, BufferPool] = {}
    for p in host.places:
        for name, pool in attach_pools(topo, p, ctx.run_id).items():
            if name in pools:
                pool.close()
            else:
                pools[name] = pool
    for p in host.places:
        if own := topo.writes(p):
            pools[own].reclaim()  # our previous incarnation's buffers are nobody's now
    wire = ZmqLink(ctx.run_dir, topo.bound(host), topo.immediate, peers=topo.peers(host))
    hosted = build(topo, host, cfg, wire, pools, stopping=ctx.stopping)
    hosted.beat = ctx.beat
    ctx.stats = hosted.stats
    ctx.ready()
    log.info("ready: %s in one process", " and ".join(p.name for p in host.places))
    try:
        hosted.run(ctx.stopping.is_set)
    finally:
        wire.close()
        for pool in pools.values():
            pool.close()
