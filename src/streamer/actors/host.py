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
reborn at once (docs/placement.md says what that costs). In a shard (`InLoop`) the front that
would replay the actor's streams is in the same process, so the actor alone is replaced there
and the front plays its streams again, with a restart intensity of its own. At stop each actor settles its fate
by the skeleton's rule, upstream first, so what the decoder hands over while it drains is
still read by the segmenter's drain.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence

import prometheus_client

from streamer.actors.actor import POLL_S, Actor, Env, attach_pools
from streamer.runtime.clock import Clock, MonotonicClock
from streamer.runtime.config import Config
from streamer.runtime.process import ChildContext, enter_child
from streamer.runtime.topology import Host, Topology
from streamer.transport.link import HostLink, Link, Local
from streamer.transport.shm import BufferPool
from streamer.transport.sockets import ZmqLink

log = logging.getLogger("host")
SHARD_TURN_BYTES = 256 << 10  # audio an actor takes per turn in a front's loop (about 1.4 s of 48 kHz s16 stereo)
SHARD_STOP_DRAIN_S = 1.0  # each, after the front's sessions have drained: within the supervisor's stop timeout
# A shard's actor that raises outside any stream is replaced in its process at most this many times
# in this many seconds; one more and the process ends (a bug that comes back at once is the
# supervisor's to judge, with its own restart intensity), as OTP's `intensity` and `period` do.
SHARD_RESTARTS_MAX = 3
SHARD_RESTARTS_WITHIN_S = 30.0
RESTARTED = prometheus_client.Counter("streamer_shard_restarts",
                                      "Actors a shard replaced in its own process after an error no `contain` took",
                                      ["stage"])


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
    """The inboxes of `host`'s actors that its own actors send to, each bounded by the pool its
    senders would have written into: that much audio in flight, as through the pool. (An inbox
    other processes send to as well, a front's in a shard, is also bound: its reader reads both.)"""
    limits: dict[str, int] = {}
    for p in host.places:
        for inbox in topo.inboxes(p):
            senders = [q for q in host.places if inbox in topo.sends_to(q) and topo.local(q, inbox)]
            if not senders:
                continue
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
        self.stepping: Actor | None = None  # the actor whose step runs: the one that raised, if one did

    def stats(self) -> dict[str, object]:
        return {a.place.name: a.stats() for a in self.actors}

    def turn(self, timeout_s: float | None = None) -> None:
        self.stepping = None
        reading = [a.reading() for a in self.actors]
        if timeout_s != 0 and not any(self.local.waiting(r) for r in reading):  # (0: take what is there)
            remote = list(dict.fromkeys(i for r in reading for i in r if i not in self.local))
            patience = min((a.patience() for a in self.actors), default=POLL_S)
            self.wire.wait(remote, patience if timeout_s is None else timeout_s)
        for actor in self.actors:
            # Read again: the step before may have filled this actor's local inbox, or freed room
            # in it for the one before (whose output is then retried in its next step).
            self.stepping = actor
            actor.step(actor.reading())
        self.stepping = None
        self.beat()

    def replace(self, failed: Actor) -> Actor:
        """A new actor in `failed`'s place, as a new process would start it: no streams, no
        input of the old one's (its local inboxes emptied; what waits on its sockets is read by
        the new one, which ignores what it does not know), its pool's buffers reclaimed (a reader
        of a buffer reused since gets `StaleBuffer`, as after a process's death). What the old
        one held for others (its outbox) is dropped with it, and so are the packets of its last
        step that it had taken and not handled; who sent it streams plays them again from their
        checkpoints, as after that stage's death (`restarted`). What the new one must know of the
        old one's life (`Actor.inherit`: deaths it heard of, its totals) it takes over."""
        for inbox in failed.env.topology.inboxes(failed.place):
            if inbox in self.local:
                self.local.clear(inbox)
        if failed.pool is not None:
            failed.pool.reclaim()
        fresh = type(failed)(failed.env)
        fresh.turn_bytes = failed.turn_bytes  # type: ignore[misc]
        fresh.stop_drain_s = failed.stop_drain_s  # type: ignore[misc]
        fresh.inherit(failed)
        self.actors[self.actors.index(failed)] = fresh
        fresh.on_start()
        return fresh

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
    """The actors of `host` on `wire` and `pools` (a test passes a `MemoryLink` and its own). A
    front in the host is not an actor: it reads its own local inbox (`front.pipeline`)."""
    local = local_inboxes(topo, host, pools)
    link = HostLink(wire, local)
    clock = clock or MonotonicClock()
    actors = [actor_class(p.role)(Env(p, cfg, link, pools, clock, **env))  # type: ignore[arg-type]
              for p in host.places if p.role != "front"]
    return Hosted(actors, wire, local, clock=clock)


class Process:
    """What a process of several actors sets up: its pools, its one ZeroMQ link (binding the
    inboxes other processes send to, less those `bound_elsewhere`: a front binds its own), its
    actors. Closed once they have stopped."""

    def __init__(self, ctx: ChildContext, bound_elsewhere: tuple[str, ...] = ()) -> None:
        cfg = ctx.cfg()
        topo = Topology(cfg)
        host = Host(ctx.hosted)
        self.pools: dict[str, BufferPool] = {}
        for p in host.places:
            if p.role == "front":
                continue  # the front attaches its own pool
            for name, pool in attach_pools(topo, p, ctx.run_id).items():
                if name in self.pools:
                    pool.close()
                else:
                    self.pools[name] = pool
        for p in host.places:
            if p.role != "front" and (own := topo.writes(p)):
                self.pools[own].reclaim()  # our previous incarnation's buffers are nobody's now
        inboxes = tuple(i for i in topo.bound(host) if i not in bound_elsewhere)
        self.wire = ZmqLink(ctx.run_dir, inboxes, topo.immediate, peers=topo.peers(host))
        self.hosted = build(topo, host, cfg, self.wire, self.pools, stopping=ctx.stopping)
        self.reading = inboxes
        ctx.stats = self.hosted.stats

    def close(self) -> None:
        self.wire.close()
        for pool in self.pools.values():
            pool.close()


def run_host(ctx: ChildContext) -> None:
    """The body of a process that runs several actors: set up, serve until SIGTERM, stop."""
    enter_child(ctx)
    proc = Process(ctx)
    proc.hosted.beat = ctx.beat
    ctx.ready()
    log.info("ready: %s in one process", " and ".join(p.name for p in ctx.hosted))
    try:
        proc.hosted.run(ctx.stopping.is_set)
    finally:
        proc.close()


class InLoop:
    """A process's actors turned by an asyncio event loop, beside a front's sessions (a shard:
    `placement = "shards"`), instead of by a loop of their own. A turn runs when one of the link's
    sockets turns readable, when something was handed to an actor in memory (`kick`), or when
    the shortest patience of any actor has passed; it never blocks (`Hosted.turn(0)`). After each
    turn `after` runs (the front reads what its actors handed it). While input is left over, the
    next turn is scheduled at once: the sockets' descriptors are edge-triggered, and a turn takes
    at most `turn_limit` packets per inbox."""

    def __init__(self, hosted: Hosted, wire: ZmqLink, loop: asyncio.AbstractEventLoop,
                 close: Callable[[], None] = lambda: None) -> None:
        self.hosted = hosted
        self.wire = wire
        self.loop = loop
        self._close = close
        self.turns = 0  # turns run, and of those the ones a timer ran (nothing had woken the loop)
        self.timed = 0
        self.after: Callable[[], None] = lambda: None
        self.restarted: Callable[[Actor], None] = lambda actor: None  # the front plays its streams again
        self.replaced: deque[float] = deque()  # when actors were replaced, within the restart period
        self._soon: asyncio.Handle | None = None
        self._later: asyncio.TimerHandle | None = None
        self._stopped = False
        for actor in self.hosted.actors:
            # A turn holds up every session of the front: a few milliseconds of audio, not 4 MiB.
            actor.turn_bytes = SHARD_TURN_BYTES  # type: ignore[misc]
            actor.stop_drain_s = SHARD_STOP_DRAIN_S  # type: ignore[misc]

    def start(self) -> None:
        for actor in self.hosted.actors:
            actor.on_start()
        for fd in self.wire.fds():
            self.loop.add_reader(fd, self.kick)
        self.kick()

    def kick(self) -> None:
        if self._soon is None and not self._stopped:
            self._soon = self.loop.call_soon(self._turn)

    def _timed_turn(self) -> None:
        self.timed += 1
        self._turn()

    def _turn(self) -> None:
        self.turns += 1
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self._soon = self._later = None
        local = self.hosted.local
        taken = local.taken
        try:
            self.hosted.turn(0)
        except Exception:
            self._replace(self.hosted.stepping)
            self.kick()  # the actors after it have not stepped in this turn
            return
        try:
            self.after()
        except Exception:
            self._replace(None)
        reading = [i for a in self.hosted.actors for i in a.reading()]
        made_room = local.taken > taken and any(a.held for a in self.hosted.actors)
        if made_room or local.waiting(reading) or self.wire.readable(reading):
            self.kick()
        else:
            self._later = self.loop.call_later(min((self._patience(a) for a in self.hosted.actors), default=POLL_S),
                                               self._timed_turn)

    def _replace(self, failed: Actor | None) -> None:
        """What no `contain` took: the actor that raised is replaced in this process and its
        streams are played again from their checkpoints, so no session notices, as after its own
        process's death in a split layout. A front that raised, or an actor that raises again
        and again, ends the process, which the supervisor restarts: the shard's sessions close
        1006 and its clients reconnect. (Left to asyncio, the error would be logged and the
        shard would go on half-turned, its heartbeat beating.)"""
        now = self.hosted.clock.now()
        while self.replaced and self.replaced[0] < now - SHARD_RESTARTS_WITHIN_S:
            self.replaced.popleft()
        if failed is None or len(self.replaced) >= SHARD_RESTARTS_MAX:
            log.exception("%s of this shard raised: the process ends",
                          "the front" if failed is None else f"{failed.place.name}, replaced too often,")
            raise SystemExit(70) from None
        log.exception("%s raised outside any stream: replaced in this process, its streams played again",
                      failed.place.name)
        self.replaced.append(now)
        try:
            fresh = self.hosted.replace(failed)
            self.restarted(fresh)
        except Exception:
            # Half replaced, or some streams not played again: they would wait for results that
            # never come. The supervisor's restart is the clean slate.
            log.exception("replacing %s failed: the process ends", failed.place.name)
            raise SystemExit(70) from None
        RESTARTED.labels(failed.role).inc()

    def _patience(self, actor: Actor) -> float:
        """An actor held back only by a local inbox gets room in a turn of this loop (its reader's
        step), which the turn that makes it follows at once: no need to poll every `HELD_POLL_S`."""
        if actor.held and actor.outbox.waiting_for() <= self.hosted.local.queues.keys():
            return POLL_S
        return actor.patience()

    def stop(self) -> None:
        """Stop turning in the loop, then let the actors settle what was queued, as alone."""
        self._stopped = True
        for fd in self.wire.fds():
            self.loop.remove_reader(fd)
        for handle in (self._soon, self._later):
            if handle is not None:
                handle.cancel()
        self.hosted.stop()
        self._close()
