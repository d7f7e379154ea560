"""The one skeleton every actor process runs on.

An actor is a small class that says what it does with a message; the base does the rest.
Hooks, all optional:

* `on_start()`: once the link and pools are up, before the first message.
* `on_message(msg, slab)`: one item of a packet. `slab` holds the bytes of the packet's
  shared-memory allocation (copied out and already released), None when the packet carried
  none, or when its allocation was reclaimed after a crash (then every item with a `Slice`
  has lost its audio, and the actor must say so rather than read it). From an actor of the
  same process it is that item's own audio, read-only, where its `Slice` says: the actor
  reads it the same way and cannot tell.
* `on_exit(note)`: another process of the group died (the supervisor's `Exited`).
* `on_idle()`: after every turn, also when nothing came: dispatch, timers, periodic reports.
* `on_stop()`: last, once the fate of what was queued is settled.
* `accepting()`: False holds the data inboxes back (the actor's own backpressure).
* `contain(item, error)`: a handler raised; end what the item concerns (its stream) and go
  on (True), or let the process die (False, the default).
* `stats()`: running totals for the heartbeat (`/api/v1/actors`, `streamer top`).

One turn: wait for input (at most `POLL_S`, or `REST_POLL_S` for an actor `at_rest`), take what
is waiting on the control inboxes, then on the data inboxes (at most `turn_limit` packets each,
unless held back), hand every item to its hook, run `on_idle`, then `flush`: everything the
actor `emit`ted during the turn goes out as one packet per destination, with one allocation in
the actor's own pool for all of that packet's audio. Nothing waits for a timer: a packet holds
what was waiting when the turn began.

Where an actor runs is not its business: alone in its process (`run_process`, which turns it
with `turn`), or beside others (`actors/host.py`, which waits for all of them at once and gives
each a `step` per turn); its link says which destinations are in the same process, and the
outbox hands their packets over in memory.

Backpressure: when the pool is full, or a destination cannot take a packet, the packet
stays pending (what the actor emits for that destination meanwhile queues behind it, in
order) and the data inboxes are not read until it has gone; the loop keeps turning
(and beating) meanwhile, polling every `HELD_POLL_S`. A stage never sleeps in a handler.

The fate of messages at stop, one rule for every actor (pykka's: the stop queues behind what
is already in the mailbox). On SIGTERM the actor stops taking new work from its peers'
point of view but handles every packet already waiting, for up to `stop_drain_s` by its
clock; what is still waiting then is dropped and counted in the log. A handler that is
running always finishes: a process never stops mid-message. Then `on_stop`, then one last
flush; packets that cannot go are dropped and counted. What a dead or stopped actor never
answered is the business of whoever handed it out (the segmenter redoes a model's items;
fronts fail the streams of a dead stage).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from streamer.runtime.clock import Clock, MonotonicClock
from streamer.runtime.config import Config
from streamer.runtime.process import ChildContext, enter_child
from streamer.runtime.topology import Place, Topology
from streamer.transport.link import Handed, HostLink, Link, Raw
from streamer.transport.messages import Exited, Message, decode
from streamer.transport.outbox import Outbox
from streamer.transport.shm import BufferPool, Payload, StaleBuffer

log = logging.getLogger("actor")

POLL_S = 0.1  # longest wait for input: on_idle timers run at least this often
REST_POLL_S = 0.5  # the same for an actor at rest (`at_rest`): a group nobody uses costs next to nothing
HELD_POLL_S = 0.002  # while output is pending, how often the flush is retried

Slab = bytes | memoryview  # what `on_message` gets: a packet's audio, or a co-located sender's item's


@dataclass
class Env:
    """What an actor is given: who it is, its configuration, its link, its pools, its clock."""

    place: Place
    cfg: Config
    link: Link
    pools: dict[str, BufferPool]
    clock: Clock = field(default_factory=MonotonicClock)
    beat: Callable[[], None] = lambda: None
    stopping: threading.Event = field(default_factory=threading.Event)

    @cached_property
    def topology(self) -> Topology:
        """Built once: the config does not change in a process's life."""
        return Topology(self.cfg)


class Actor:
    role: ClassVar[str]
    stop_drain_s: ClassVar[float] = 2.0
    turn_limit: ClassVar[int] = 64  # packets taken from one inbox per turn
    turn_bytes: ClassVar[int] = 4 << 20  # ... and no more once their audio passes this
    take_at_once: ClassVar[int] = 8

    def __init__(self, env: Env) -> None:
        self.env = env
        self.cfg = env.cfg
        self.clock = env.clock
        self.place = env.place
        topo = env.topology
        self._control = topo.control_inboxes(env.place)
        self._data = tuple(i for i in topo.inboxes(env.place) if i not in self._control)
        own = topo.writes(env.place)
        self.pool: BufferPool | None = env.pools.get(own) if own else None
        link = env.link
        if isinstance(link, HostLink):  # beside other actors: theirs are handed over in memory
            local = [d for d in topo.sends_to(env.place) if d in link.local]
            self.outbox = Outbox(self.pool, link.send, hand=link.hand, local=local)
        else:
            self.outbox = Outbox(self.pool, link.send)
        self.dropped_at_stop = 0

    # -- hooks ---------------------------------------------------------------------------

    def on_start(self) -> None:
        pass

    def on_message(self, msg: Message, slab: Slab | None) -> None:
        pass

    def on_exit(self, note: Exited) -> None:
        pass

    def on_idle(self) -> None:
        pass

    def on_stop(self) -> None:
        pass

    def inherit(self, old: Actor) -> None:
        """This actor replaces `old` in the same process (`actors.host.Hosted.replace`), whose
        streams are played again from their checkpoints: take over what outlives them (deaths
        heard of on inboxes it keeps reading, its totals) and end what `old` left open."""

    def accepting(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {}

    # -- output ----------------------------------------------------------------------------

    def emit(self, dest: str, msg: Message, payload: Payload | None = None) -> None:
        """Queue `msg` for `dest` in this turn's packet; `payload` goes into the packet's slab and
        `msg.at` is filled in with where. A payload that can never fit the pool raises `TooLarge`
        here, in the handler that made it, so `contain` fails its stream, not the process."""
        self.outbox.put(dest, msg, payload)

    def flush(self) -> bool:
        """Send every destination its pending packets, in order; True when nothing is left pending."""
        return self.outbox.flush()

    def input_waiting(self) -> bool:
        """Whether a packet waits on the data inboxes now (a snapshot, without blocking)."""
        return bool(self._data) and self.env.link.wait(self._data, 0)

    @property
    def held(self) -> bool:
        """Output is waiting for room: input stays where it is until it has gone."""
        return self.outbox.held

    # -- the loop -----------------------------------------------------------------------------

    def turn(self, timeout_s: float | None = None) -> None:
        """Wait for input, handle what is waiting, run `on_idle`, flush."""
        reading = self.reading()
        self.env.link.wait(reading, self.patience() if timeout_s is None else timeout_s)
        self.step(reading)
        self.env.beat()

    def reading(self) -> tuple[str, ...]:
        """The inboxes this turn reads: control always, data unless held back."""
        return self._control + (self._data if self.accepting() and not self.held else ())

    def patience(self) -> float:
        """How long this actor may wait for input before its next step."""
        if self.held:
            return HELD_POLL_S
        return REST_POLL_S if self.at_rest() else POLL_S

    def at_rest(self) -> bool:
        """Nothing in progress that a timer of `on_idle` must move on: no stream open, no work
        waiting. An idle group's actors then wake twice a second, not ten times (their periodic
        reports, `Ready` and `Load`, are no more frequent than that)."""
        return False

    def step(self, reading: tuple[str, ...]) -> None:
        """A turn less its wait: handle what is waiting in `reading`, run `on_idle`, flush."""
        for inbox in reading:
            self._take(inbox)
        self.on_idle()
        self.flush()

    def _take(self, inbox: str) -> None:
        """Handle up to `turn_limit` packets of `inbox`, and no more once the audio they carried
        passes `turn_bytes`: what one turn makes of its input must fit the pool it writes to, however
        large the packets an upstream burst left waiting."""
        taken = audio = 0
        while taken < self.turn_limit and audio < self.turn_bytes:
            raws = self.env.link.take(inbox, min(self.take_at_once, self.turn_limit - taken))
            if not raws:
                return
            taken += len(raws)
            for raw in raws:
                audio += self._handle(raw)

    def _handle(self, raw: Raw) -> int:
        """Hand a packet's items to the hooks; the bytes of audio it carried."""
        if isinstance(raw, Handed):  # from an actor of this process: each item with its own audio
            for item, audio in zip(raw.items, raw.audio, strict=True):
                self._item(item, audio)
            return raw.nbytes
        packet = decode(raw)
        slab: bytes | None = None
        if packet.slab is not None:
            pool = self.env.pools[packet.slab.pool]
            try:
                slab = pool.read_bytes(packet.slab)
            except StaleBuffer:
                log.warning("a packet's audio was reclaimed before it was read (its producer restarted)")
            pool.release(packet.slab)
        for item in packet.items:
            self._item(item, slab)
        return packet.slab.nbytes if packet.slab is not None else 0

    def _item(self, item: Message, slab: Slab | None) -> None:
        try:
            if isinstance(item, Exited):
                self.on_exit(item)
            else:
                self.on_message(item, slab)
        except Exception as e:
            if not self.contain(item, e):
                raise

    def contain(self, item: Message, error: Exception) -> bool:
        """A handler raised on `item`: end what it concerns (a stream) and go on, or return False
        and let the process die and be restarted. One stream's bad state must never take down
        every stream of the process."""
        return False

    def run(self) -> None:
        """Turn until told to stop, then settle the fate of what is queued (see the module doc)."""
        self.on_start()
        while not self.env.stopping.is_set():
            self.turn()
        self.stop()

    def stop(self) -> None:
        deadline = self.clock.now() + self.stop_drain_s
        inboxes = self._control + self._data
        while self.clock.now() < deadline:  # one packet at a time: the deadline is checked between them
            raw = next((r for inbox in inboxes for r in self.env.link.take(inbox, 1)), None)
            if raw is None:
                break
            self._handle(raw)
            self.on_idle()
            self.flush()
        self.dropped_at_stop = sum(len(self.env.link.take(i, 1 << 30)) for i in inboxes)
        self.on_stop()
        self.flush()
        unsent = self.outbox.discard()
        if self.dropped_at_stop or unsent:
            log.warning("stopping: dropped %d queued packets and %d unsent items", self.dropped_at_stop, unsent)


def attach_pools(topo: Topology, place: Place, run_id: str) -> dict[str, BufferPool]:
    names = set(topo.reads(place)) | ({w} if (w := topo.writes(place)) else set())
    return {n: BufferPool.attach(topo.pools[n], run_id) for n in sorted(names)}


def run_process(ctx: ChildContext, cls: type[Actor]) -> None:
    """The body of an actor process: set up, serve until SIGTERM, stop as the base says."""
    from streamer.transport.sockets import ZmqLink

    enter_child(ctx)
    cfg = ctx.cfg()
    topo = Topology(cfg)
    place = ctx.place
    pools = attach_pools(topo, place, ctx.run_id)
    own = topo.writes(place)
    if own:
        pools[own].reclaim()  # our previous incarnation's buffers are nobody's now
    link = ZmqLink(ctx.run_dir, topo.inboxes(place), topo.immediate, peers=topo.sends_to(place))
    actor = cls(Env(place, cfg, link, pools, beat=ctx.beat, stopping=ctx.stopping))
    ctx.stats = actor.stats
    ctx.ready()
    log.info("ready")
    try:
        actor.run()
    finally:
        link.close()
        for pool in pools.values():
            pool.close()
