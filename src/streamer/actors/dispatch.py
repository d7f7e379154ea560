"""Handing work to model actors by credit, in batches, finals first.

A plain PUSH socket deals messages to its peers in turn, queues them for a dead peer and
loses whatever a dead peer had queued. Here each model actor (a peer) has its own PUSH socket
(IMMEDIATE: nothing queues for an absent peer) and takes `capacity` packets at a time, each
of up to `max_batch` items that are waiting now: a packet never waits to be filled. A slow
actor never sits on work an idle one could do, and every item handed out is remembered
until its `Done` comes back.

The queue. Finals (and the simple route's chunks) go out ahead of every interim, in calls of
their own, each channel's in arrival order and the channels in turn (`actors/fair.py`), so a
stream that arrives with a backlog cannot hold every other stream's results back. Interims
go only to a peer beside which another stays idle (when there are several), so a final never
waits behind a call of interims. A channel has at most one interim waiting: a newer one
replaces it (it covers the same region and more), and the region's final drops it; both are
counted (`streamer_interims_superseded_total`). So when the models fall behind, interims thin
out and finals keep their pace. A final is never dropped.

Audio waits in this process's memory until its item is dispatched; then the packet's items
are written into one allocation of the segmenter's pool, which the model releases as soon as
it has read them. The items' audio stays here until their `Done`, so they can be sent again.

In flight. When a peer's process dies (the supervisor's `Exited`, at once) or turns out to have
been replaced (a `Ready` from a new pid), every item it held goes back to the head of the queue.
Only the items of its oldest unanswered packet (the call it was running) spend an attempt; items
merely queued behind it do not. With several shards a model actor also holds other shards'
packets, and says which shard's call it begins (`Running`): if it was another's, none of ours
spends an attempt. Our credit covers only our own packets, so an actor that said it runs another
shard's call (or `BUSY`) gets nothing of ours until a `Done` of ours or its `GRANTED` frees it;
a final held back for that asks such actors for a turn (`Want`), and a turn given when nothing
of ours waits is passed on (`Pass`): actors/turns.py. A final thus waits here for whichever
actor is ours first, rather than behind another shard's call. An item that has spent an attempt
travels alone from then on, so a poison item takes no innocent item down with it; past
`max_attempts` the caller reports exactly one error for it (`failed`). The dead peer's
allocations are released here: only this process knows which ones it held.

First contact. The first time this dispatcher hears a peer's pid, before anything else goes
there, it sends that process `Forget`: drop every sequential stream you hold. The actor may
have held streams for a segmenter that has since died, whose streams this one rebinds
wherever it likes; nothing else would ever release them. Until the `Forget` has gone, the
peer is offered nothing (ZeroMQ keeps one peer's messages in order, so whatever follows it
arrives after it). A `Forget` that cannot go yet (a process that has just bound its inbox is
reachable only once this side's connection comes up, a reconnect interval later) is tried
again at every `pump`, not at the peer's next `Ready` a second later: under load, a second
without a new model actor held up work that it could have taken.

Sending. Packets go through the segmenter's own `Outbox` (the pool it writes into, the link it
sends on, the size of a packet), but by `offer`, not by the `put` and `flush` that hold a
packet back until it can go. A packet for a peer must go now or not at all, for three
reasons. Credit: an item is handed to a peer only once its packet has gone; one that cannot
go stays in this queue, to be offered to whichever peer can take it (finals first, channels
in turn), not pinned behind a peer that may be dead. Input: the skeleton stops reading its
data inboxes while any packet waits in its outbox, and a model process that is absent
(IMMEDIATE: a send fails exactly then) or restarting must not stop the segmenter taking in
audio while the other actors work; its own backpressure is the audio waiting here
(`queued_seconds`, `[segmenter] max_pending_s`). Deaths: what a dead peer held is redone from
here, and its slabs released here; a packet still waiting for a dead process would reach its
successor, numbered for a credit nobody granted.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import prometheus_client
from opentelemetry.trace import StatusCode

from streamer.actors.binding import NO_AUDIO, Bindings, Item, holds
from streamer.actors.fair import FairQueue, Key, channel_of
from streamer.runtime import logs, telemetry
from streamer.runtime.clock import Clock
from streamer.transport.messages import (
    BUSY,
    GRANTED,
    MODEL_RATE,
    CloseChannel,
    Done,
    Feed,
    Forget,
    Infer,
    Pass,
    Ready,
    Restore,
    Running,
    Stateful,
    ToModel,
    Want,
    audio_place,
)
from streamer.transport.outbox import Outbox, Refused, Went, aligned
from streamer.transport.shm import BufferRef

log = logging.getLogger("dispatch")
ASK_AGAIN_S = 0.05  # after passing a turn we could not use (the pool full), before asking for another
_tracer = telemetry.tracer("streamer.dispatch")
RETRIES = prometheus_client.Counter("streamer_dispatch_retries", "Work items sent again after their model actor died")
GAVE_UP = prometheus_client.Counter("streamer_dispatch_failures",
                                    "Work items answered with an error after max_attempts model deaths")
SUPERSEDED = prometheus_client.Counter("streamer_interims_superseded",
                                       "Interims dropped while waiting: a newer interim or the region's final came")
HANDED = prometheus_client.Gauge("streamer_dispatch_handed",
                                 "Work items sent to a model actor and not yet answered (those waiting here: "
                                 "streamer_stage_queue_depth)")
REACHABLE = prometheus_client.Gauge("streamer_dispatch_reachable_models",
                                    "Model actors this segmenter can hand work to now (announced and greeted)")
BATCH = prometheus_client.Histogram("streamer_dispatch_batch_items", "Items per packet handed to a model actor",
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
# Where a final's time goes between its region's end and its result, besides the model call
# itself (`streamer_inference_seconds`): waiting here for an actor, and at the actor for its call.
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 5.0, 10.0)
FINAL_WAIT = prometheus_client.Histogram(
    "streamer_dispatch_final_wait_seconds",
    "Time a final (or a simple-route chunk) waited in its segmenter before it was handed to a model actor "
    "(after its actor died: from its return to the queue)",
    buckets=WAIT_BUCKETS)
MODEL_WAIT = prometheus_client.Histogram(
    "streamer_dispatch_model_wait_seconds",
    "Time from handing a packet (of any kind) to a model actor to its Done, less the model's time on it: "
    "queued at the actor behind other calls (another shard's too) and both hops", buckets=WAIT_BUCKETS)


@dataclass
class Batch:
    """One packet handed to a peer, until every item of it is `Done`."""

    slab: BufferRef | None
    items: dict[int, Item[ToModel]]
    handed_at: float = 0.0


@dataclass
class Peer:
    dest: str
    pid: int = 0
    capacity: int = 0
    max_batch: int = 1
    batches: deque[Batch] = field(default_factory=deque)  # oldest first: the head is the call running
    greeted: bool = False  # its process has been sent `Forget`
    granted: int = 0  # the capacity its last `Ready` gave, which it has once greeted
    running: int | None = None  # what it last said (`Running`): whose call it runs, or whose turn it is; None: free
    wanted: bool = False  # we asked it for a turn (`Want`) and have not had it yet

    def new_process(self, pid: int) -> None:
        """What we knew of its last process (greeted, what it said, what we asked) goes with it."""
        self.pid, self.greeted, self.running, self.wanted = pid, False, None, False


class Dispatcher:
    def __init__(self, outbox: Outbox, dests: list[str], clock: Clock, max_attempts: int = 3,
                 first_id: int = 0, shard: int = 0) -> None:
        self._outbox = outbox
        self.shard = shard  # whose segmenter this is: a model actor keeps each shard's work apart
        self.first_id = first_id  # the lowest `work_id` this dispatcher will hand out (`Forget.below`)
        self._last_id = first_id - 1
        self._clock = clock
        self.peers = [Peer(d) for d in dests]
        self._finals = FairQueue()  # served in turn by channel (actors/fair.py)
        self._back_at: dict[int, float] = {}  # finals back in the queue after their actor died: since when
        self._interims: dict[Key, Item[Infer]] = {}
        self._queued_samples = 0
        self._dead: set[int] = set()
        self.max_attempts = max_attempts
        self.failed: list[Infer] = []  # items past their attempts: the caller reports them
        self.superseded = 0
        self.sequential = Bindings(max_attempts)  # streams bound to one peer (stateful models)
        self.max_bytes = outbox.max_bytes  # of audio per packet: several fit the pool at once
        self._ask_after = 0.0  # no `Want` before this (a turn just passed for want of room in the pool)

    def new_id(self) -> int:
        """A `work_id` for a new item: every item has its own, a `Drop` too (a packet's items are
        told apart by it, and a model actor skips work numbered below its segmenter's first)."""
        self._last_id += 1
        return self._last_id

    @property
    def failed_streams(self) -> list[tuple[str, int, str]]:
        return self.sequential.failed

    # -- what is waiting -------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Items waiting in the shared queue (the sequential streams' wait on their own peers)."""
        return len(self._finals) + len(self._interims)

    @property
    def queued_seconds(self) -> float:
        return (self._queued_samples + self.sequential.waiting_samples) / MODEL_RATE

    @property
    def inflight(self) -> int:
        return sum(len(b.items) for s in self.peers for b in s.batches)

    @property
    def live_peers(self) -> int:
        return sum(1 for s in self.peers if s.pid)

    @property
    def reachable(self) -> int:
        """Peers that may be handed work now: their `Ready` came and their `Forget` has gone."""
        return sum(1 for s in self.peers if s.pid and s.greeted)

    def publish(self) -> None:
        """The gauges that tell a backlog here from work the models hold (`stats`, each heartbeat)."""
        HANDED.set(self.inflight)
        REACHABLE.set(self.reachable)

    def queue_delay(self, counts: Callable[[str], bool] = lambda _: True) -> float:
        """How long the oldest waiting final of a stream that `counts` has waited (0 when none waits)."""
        oldest = self._finals.oldest(counts)
        return 0.0 if oldest is None else self._clock.now() - oldest.queued_at

    def submit_sequential(self, work: Restore | Feed | CloseChannel,
                          audio: npt.NDArray[np.float32] = NO_AUDIO) -> None:
        """An item of a sequential stream: it goes to the peer the stream is bound to, in order."""
        self.sequential.submit(Item(work, audio, self._clock.now()))

    def submit(self, work: Infer, audio: npt.NDArray[np.float32]) -> None:
        """A piece on its own: finals and chunks to the fair queue, an interim in its channel's one place."""
        item = Item(work, audio, self._clock.now())
        key = channel_of(item)
        self._queued_samples += audio.shape[0]
        if work.is_final is False:
            old = self._interims.get(key)
            if old is not None:
                self._forget(old)
            self._interims[key] = item
            return
        waiting = self._interims.get(key)
        if work.is_final and waiting is not None and waiting.work.seq == work.seq:
            del self._interims[key]
            self._forget(waiting)
        self._finals.append(item)

    def _forget(self, item: Item[Infer]) -> None:
        self._queued_samples -= item.audio.shape[0]
        self.superseded += 1
        SUPERSEDED.inc()

    def cancel(self, stream: str, keep_below: list[int] | None = None) -> None:
        """Forget a stream's waiting items (its in-flight ones finish and are ignored); with
        `keep_below`, keep its finals whose `seq` on their channel is below that (a replay
        makes the rest again)."""
        def kept(i: Item[Infer]) -> bool:
            w = i.work
            return w.stream != stream or (keep_below is not None and w.is_final is not False
                                          and w.seq < keep_below[w.channel])

        self._finals.keep(kept)
        self._back_at = {i.work.work_id: self._back_at[i.work.work_id] for i in self._finals
                         if i.work.work_id in self._back_at}
        self._interims = {k: i for k, i in self._interims.items() if k[0] != stream}
        self._queued_samples = sum(i.audio.shape[0] for i in (*self._finals, *self._interims.values()))
        if keep_below is not None:
            self.sequential.reset(stream, floor=self._last_id + 1)
        else:
            self.sequential.abort(stream, self.new_id(), self._clock.now())

    # -- the model peers --------------------------------------------------------------------

    def inherit_deaths(self, old: Dispatcher) -> None:
        """A successor in the same process reads its predecessor's control inbox: the model
        processes it knew dead stay dead (a new process's inbox would hold nothing of theirs)."""
        self._dead |= old._dead

    def _peer(self, index: int, pid: int) -> Peer | None:
        if not 0 <= index < len(self.peers) or pid in self._dead:
            return None
        return self.peers[index]

    def on_ready(self, msg: Ready) -> None:
        peer = self._peer(msg.index, msg.pid)
        if peer is None:
            return
        if peer.pid != msg.pid:
            if peer.pid:  # the old pid is gone and nobody told us yet
                self._lost(msg.index)
            peer.new_process(msg.pid)
        peer.capacity = peer.granted = msg.capacity
        peer.max_batch = max(1, msg.max_batch)
        if not peer.greeted:
            self._greet(peer)

    def _greet(self, peer: Peer) -> bool:
        """Send the peer's process `Forget`: it has its credit once that has gone, none before
        (`pump` tries again)."""
        peer.greeted = isinstance(self._outbox.offer(peer.dest, [Forget(self.first_id, self.shard)], []), Went)
        peer.capacity = peer.granted if peer.greeted else 0
        return peer.greeted

    def on_running(self, msg: Running) -> None:
        peer = self._peer(msg.index, msg.pid)
        if peer is not None and peer.pid == msg.pid:
            peer.running = msg.shard
            if msg.shard == GRANTED:
                peer.wanted = False

    def _elsewhere(self, peer: Peer) -> bool:
        """Whether the peer said it runs another shard's call, or that we must not send, and has
        not given us a turn since."""
        return peer.running is not None and peer.running not in (GRANTED, self.shard)

    def _ran_ours(self, peer: Peer) -> bool:
        """Whether the call the peer was running when it died may have been our oldest packet:
        unless it said it was running another shard's (then ours were only queued). Its turn
        words (`BUSY`, `GRANTED`) are said between calls: as the last word, they tell nothing of
        which call ran since (its `Running` may have died with it), so they count as ours."""
        return peer.running is None or peer.running in (self.shard, BUSY, GRANTED)

    def on_exit(self, index: int, pid: int) -> None:
        """A model process died: its items go to the other actors now, not at its restart."""
        self._dead.add(pid)
        if 0 <= index < len(self.peers) and self.peers[index].pid == pid:
            peer = self.peers[index]
            self._lost(index)
            peer.new_process(0)
            peer.capacity = 0

    def _lost(self, index: int) -> None:
        """The peer's process is gone: its items go back to the queue, its sequential streams
        elsewhere (a death counting against those whose work it had)."""
        peer = self.peers[index]
        running = {i.work.stream for b in peer.batches for i in b.items.values()
                   if not isinstance(i.work, Infer)} if self._ran_ours(peer) else set()
        self._requeue(peer)
        self.sequential.on_death(index, running)

    def on_done(self, msg: Done) -> list[ToModel]:
        """The items answered (none if the `Done` is from a process we no longer count on, or for
        work that is not ours: a dead segmenter's packet, finished after its successor started).
        Its checkpoints count only for items we handed out: a predecessor's checkpoint of a
        stream now bound to the same actor again is no place to replay that stream from."""
        peer = self._peer(msg.index, msg.pid)
        if peer is None or peer.pid != msg.pid:
            return []
        ids = set(msg.work_ids)
        peer.running = None  # our call ended: free for us, unless it says otherwise (`BUSY`)
        done = []
        now = self._clock.now()
        for batch in list(peer.batches):
            answered = ids & batch.items.keys()
            if answered:
                MODEL_WAIT.observe(max(0.0, now - batch.handed_at - msg.busy_s))
            for work_id in answered:
                done.append(batch.items.pop(work_id).work)
            if not batch.items:
                peer.batches.remove(batch)
        ours = {w.work_id for w in done}
        self.sequential.done(msg.index, [w for w in done if isinstance(w, Stateful)],
                             [p for p in msg.points if p.work_id in ours])
        return done

    # -- handing out ------------------------------------------------------------------------

    def pump(self) -> None:
        """Send waiting items to peers with credit: first each sequential stream's to its own peer,
        then the shared queue's, the least loaded peer first, finals first. What is waiting is
        shared among the peers that are idle: two items and two idle actors make two calls at
        once, not a batch of two on one actor while the other waits. Then the turns (several
        shards only): a turn given and not used is passed on, and a final still held back asks
        the actors busy with other shards' work for one."""
        self._pump()
        for peer in self.peers:
            if not (peer.pid and peer.greeted):  # (nothing goes before the `Forget`)
                continue
            if peer.running == GRANTED:  # our turn, and nothing sent on it: the next shard's
                self._outbox.offer(peer.dest, [Pass(self.shard)], [])
                peer.running = BUSY  # (should the word not go, the turn lapses at the actor)
                if self._finals:  # it could not go (the pool is full): ask again later, not at once
                    self._ask_after = self._clock.now() + ASK_AGAIN_S
            elif self._finals and self._elsewhere(peer) and not peer.wanted and peer.capacity \
                    and self._clock.now() >= self._ask_after:
                peer.wanted = isinstance(self._outbox.offer(peer.dest, [Want(self.shard)], []), Went)

    def _pump(self) -> None:
        for ungreeted in self.peers:
            if ungreeted.pid and not ungreeted.greeted:
                self._greet(ungreeted)
        if self.sequential.waiting:
            self.sequential.bind(i for i in self._order if self.peers[i].pid)
            for index, bound_to in enumerate(self.peers):
                while bound_to.pid and len(bound_to.batches) < bound_to.capacity:
                    ordered = self.sequential.take(index, bound_to.max_batch, self.max_bytes)
                    if not ordered:
                        break
                    if not self._hand(bound_to, ordered):
                        self.sequential.put_back(ordered)
                        break
                    self.sequential.handed(ordered)
        while self.queued:
            finals = bool(self._finals)
            peer = self._pick(finals)
            if peer is None:
                return
            if not finals and not self._spare_beside(peer):
                return
            waiting = len(self._finals) if finals else len(self._interims)
            idle = sum(1 for s in self.peers if s.pid and not s.batches and s.capacity
                       and not (finals and self._elsewhere(s))) or 1
            items = self._take(min(peer.max_batch, -(-waiting // idle)), finals)
            if not self._hand(peer, items):
                self._put_back(items)
                if peer.capacity:  # the pool is full until models read what they were given
                    return

    def _spare_beside(self, peer: Peer) -> bool:
        """Whether interims may go to `peer`: only if another live peer stays idle for the next
        final, so a final never waits behind a call of interims (one peer: no choice)."""
        live = [s for s in self.peers if s.pid and s.capacity]
        return len(live) <= 1 or any(s is not peer and not s.batches for s in live)

    def _hand(self, peer: Peer, items: Sequence[Item[ToModel]]) -> bool:
        """One packet of `items` to `peer`; False if it could not go (the pool is full, or the peer
        is not connected: then it is offered nothing more until it announces itself)."""
        if not (peer.greeted or self._greet(peer)):
            return False
        sent = self._outbox.offer(peer.dest, [i.work for i in items],
                                  [(k, i.audio) for k, i in enumerate(items) if audio_place(i.work) is not None])
        if sent is Refused.PEER:
            peer.capacity = 0
        if not isinstance(sent, Went):
            return False
        BATCH.observe(len(items))
        now = self._clock.now()
        for i in items:
            if isinstance(i.work, Infer) and i.work.is_final is not False:
                FINAL_WAIT.observe(now - self._back_at.pop(i.work.work_id, i.queued_at))
        if peer.running == GRANTED:
            peer.running = self.shard  # our turn taken: its next call is ours
        peer.wanted = False
        peer.batches.append(Batch(sent.slab, {i.work.work_id: i for i in items}, now))
        return True

    @property
    def _order(self) -> list[int]:
        """The peers' indices in the order ties go, starting at this shard's own: each shard's
        first choice among idle actors is a different one, where all of them picking model-0
        would queue one shard's final behind another's call while model-1 idled."""
        n = len(self.peers)
        return [(self.shard + i) % n for i in range(n)] if n else []

    def _pick(self, final: bool) -> Peer | None:
        """The least loaded peer with credit; for a final, only one that is ours now (turns). An
        interim asks for no turn: it goes by credit alone, as it is best effort, and a newer one
        replaces it."""
        peers = [self.peers[i] for i in self._order]
        free = [s for s in peers if s.pid and len(s.batches) < s.capacity and not (final and self._elsewhere(s))]
        return min(free, key=lambda s: len(s.batches)) if free else None

    def _take(self, limit: int, finals: bool) -> list[Item[Infer]]:
        """Up to `limit` waiting finals, or if `finals` is False interims: a final shares its call
        with finals only, so no interim's work stands between it and its result. A suspect (an
        item whose actor died running it) goes alone, and nothing joins a batch behind one. A
        batch carries at most `max_bytes` of audio, so it always fits the pool."""
        out: list[Item[Infer]] = []
        size = 0
        while len(out) < limit and (self._finals if finals else self._interims):
            item = self._finals.peek() if finals else next(iter(self._interims.values()))
            suspect = item.work.attempt > 1
            size += aligned(item.audio.nbytes)
            if out and (suspect or size > self.max_bytes):
                break
            if finals:
                self._finals.popleft()
            else:
                del self._interims[channel_of(item)]
            self._queued_samples -= item.audio.shape[0]
            out.append(item)
            if suspect:
                break
        return out

    def _put_back(self, items: list[Item[Infer]]) -> None:
        """Return items to the head of the queue, in their order."""
        for item in reversed(items):
            self._queued_samples += item.audio.shape[0]
            if item.work.is_final is not False:
                self._finals.appendleft(item)
            elif channel_of(item) in self._interims:
                self._queued_samples -= item.audio.shape[0]  # a newer interim is waiting: this one is stale
                self.superseded += 1
                SUPERSEDED.inc()
            else:
                self._interims = {channel_of(item): item, **self._interims}

    def _requeue(self, peer: Peer) -> None:
        again: list[Item[Infer]] = []
        ran = self._ran_ours(peer)
        for i, batch in enumerate(peer.batches):
            self._outbox.release(batch.slab)  # a no-op if the model had read (and released) it
            again += [item for item in batch.items.values()  # (a sequential stream's go again from its checkpoint)
                      if holds(item, Infer) and self._redo(item, peer.pid, ran=ran and i == 0)]
        peer.batches.clear()
        now = self._clock.now()
        for item in again:  # its wait starts again: the time on the dead actor was not spent waiting here
            if item.work.is_final is not False:
                self._back_at[item.work.work_id] = now
        self._put_back(again)

    def _redo(self, item: Item[Infer], pid: int, ran: bool) -> bool:
        work = item.work
        with _tracer.start_as_current_span("redo", context=telemetry.context_of(work.trace), attributes={
            "streamer.work_id": work.work_id, "streamer.attempt": work.attempt, "streamer.lost_pid": pid,
            "streamer.was_running": ran, "audio.start_time": work.start_time, "audio.end_time": work.end_time,
        }) as span, logs.bound(work.stream, logs.trace_of(work.trace)):
            if not ran:
                log.info("resending work %d (queued on model pid %d, which died before running it)",
                         work.work_id, pid)
                return True
            if work.attempt >= self.max_attempts:
                self.failed.append(work)
                GAVE_UP.inc()
                span.set_status(StatusCode.ERROR, f"gave up after {work.attempt} attempts")
                log.error("giving up on work %d after %d attempts", work.work_id, work.attempt)
                return False
            work.attempt += 1
            RETRIES.inc()
            log.warning("redoing work %d (attempt %d): model pid %d died running it", work.work_id, work.attempt,
                        pid)
            return True
