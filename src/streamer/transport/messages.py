"""Everything that crosses a ZeroMQ socket: packets of typed msgpack items.

One ZeroMQ message is one `Packet`: the items a process has for one destination in one turn
of its loop, and at most one shared-memory allocation (`slab`) holding all of their audio.
An item that concerns audio says where in the slab its bytes are (`Slice`). A hop therefore
costs one send, one wake-up and one allocation per turn, whatever the number of streams.

Each item names the stream it belongs to (a stream is one start..stop on one WebSocket of
one front), so actors keep state per stream and a late item of an ended stream is
recognised and dropped. Items a stream's results follow carry `front`: the front process
that owns the stream, whose inbox the results go to.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgspec

from streamer.transport.shm import BufferRef

RouteName = Literal["segmented", "simple", "sequential"]


class Slice(msgspec.Struct, array_like=True, frozen=True):
    """Where an item's bytes lie in its packet's slab."""

    offset: int
    nbytes: int


NOWHERE = Slice(0, 0)  # an item's place before `pack` writes its bytes into a slab (or for no bytes)


class CutState(msgspec.Struct, array_like=True, frozen=True):
    """One channel at a checkpoint: its audio is needed again from `sample` (16 kHz index), a
    region is open there or not, `finals` finals (or chunks) and `events` events came before it,
    and, on the sequential route, the stateful model's own state there (None: a fresh one).

    `pins`, in a replay's `Open` only: the samples of the events after this point that the
    client has already been told of (the front's), in order; they alternate, the first an
    `inactive` if `speaking`, else an `active`. A VAD started afresh at the checkpoint may well
    decide otherwise than the one that ran (webrtcvad adapts to what it has heard: in a little
    background noise a region's start moved by 0.4 s), and a final for a region the client was
    not told of would answer nothing it knows; so a resumed cutter makes exactly these events,
    where they were, and decides for itself only after them."""

    sample: int
    speaking: bool
    finals: int
    events: int
    model: dict[str, Any] | None = None
    pins: list[int] = []


class Checkpoint(msgspec.Struct, array_like=True, frozen=True):
    """Where a stream's pipeline state can be rebuilt from: every channel's cutter, and the
    16 kHz sample from which its audio must be played again (at or before every channel's own
    point, and on a whole input sample: see `align`)."""

    sample: int
    channels: list[CutState]

    @classmethod
    def start(cls, channels: int) -> Checkpoint:
        """The stream's beginning: nothing emitted yet."""
        return cls(0, [CutState(0, False, 0, 0) for _ in range(channels)])

    def input_frames(self, rate: int) -> tuple[int, int]:
        """The replay in the client's own sample frames: the frame at `sample`, and how many frames
        before it go in first to warm a resampler up (their output is dropped)."""
        step_in, _ = _steps(rate)
        first = self.sample * rate // MODEL_RATE
        if rate == MODEL_RATE:
            return first, 0
        preroll = -(-int(PREROLL_S * rate) // step_in) * step_in
        return first, min(preroll, first)


MODEL_RATE = 16000
PREROLL_S = 0.05  # of audio before a replay's first sample, for the resampler's filter


def _steps(rate: int) -> tuple[int, int]:
    """The smallest whole numbers of input frames and 16 kHz samples that last the same time."""
    g = math.gcd(rate, MODEL_RATE)
    return rate // g, MODEL_RATE // g


def align(sample: int, rate: int) -> int:
    """The latest 16 kHz sample at or before `sample` that falls on a whole input frame at `rate`
    (a replay can only start on one)."""
    _, step_out = _steps(rate)
    return sample - sample % step_out


class Open(msgspec.Struct, tag="open", array_like=True):
    """Front -> decoder -> segmenter: a stream begins with this format.

    With `resume`, the stream already ran and a decoder or segmenter lost its state: whoever
    holds state for it drops it and rebuilds it from the checkpoint; the front then sends the
    stream's audio again from the checkpoint's sample (less the resampler's pre-roll).

    `gen` says which run of the stream this is: 0 the first, n its n-th replay. What the
    decoder makes of a run (`Frames`) and the front's `Close` for it carry the same number, so
    a segmenter that holds run n takes nothing of an earlier run: ZeroMQ hands it what a dead
    decoder had queued interleaved with what the replacement sends, so a dead run's audio,
    open or close can come after the replay's `Open`."""

    stream: str
    front: int
    route: RouteName
    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool
    interim: bool
    trace: str | None = None
    resume: Checkpoint | None = None
    gen: int = 0  # see the class doc; and everything the segmenter makes of the run carries it
    opened_at: float = 0.0  # its front's `time.monotonic()` when the stream opened (`Roster`); a replay keeps it


class Pcm(msgspec.Struct, tag="pcm", array_like=True):
    """Front -> decoder: raw client bytes (interleaved, maybe split mid-sample)."""

    stream: str
    at: Slice


class Frames(msgspec.Struct, tag="frames", array_like=True):
    """Decoder -> segmenter: float32 at 16 kHz, channel-major (channels x frames), of the run
    (`Open.gen`) the decoder is decoding."""

    stream: str
    channels: int
    frames: int
    at: Slice
    gen: int = 0


class Close(msgspec.Struct, tag="close", array_like=True):
    """The client said `stop`: flush everything buffered for the stream, then report its end.
    `gen`: the run it ends (`Open.gen`); a replay sends its own."""

    stream: str
    gen: int = 0


class Abort(msgspec.Struct, tag="abort", array_like=True):
    """The client is gone: drop the stream's state, produce nothing more."""

    stream: str


class Roster(msgspec.Struct, tag="roster", array_like=True):
    """Front -> decoder -> segmenter, every few seconds: the streams this front has open. A stage
    forgets every other stream of this front: the `Abort` that would have ended it went the same
    way and died with a decoder that died before passing it on (nobody else ever ends such a
    stream: its state, audio and place in the load report stayed for good).

    Only a stream opened before `listed_at` (`Open.opened_at`, both the front's `time.monotonic()`:
    one clock for every process of the host) is forgotten: the roster can speak only of those. A
    roster can be read after a later `Open` of its front: one a dead decoder (or a dead front) had
    queued reaches its reader interleaved with what the replacement sends."""

    front: int
    streams: list[str]
    listed_at: float = 0.0

    def forgets(self, front: int, stream: str, opened_at: float) -> bool:
        """Whether a stage forgets this stream of `front`, opened at `opened_at`."""
        return front == self.front and opened_at <= self.listed_at and stream not in self.streams


class Event(msgspec.Struct, tag="event", array_like=True):
    """Segmenter -> front: voice activity changed on a channel. `index` is its place among the
    channel's events: a replay sends some again, and the front drops those it already sent.
    `gen`: the run that made it (`Open.gen`), as on every item the segmenter makes of a stream
    (events, progress, its end, work and so results): once the front has replayed a stream it
    takes nothing of an earlier run. What a dead run said late (left in a queue, or made by a
    live segmenter from audio it had before the replay came) was not pinned in the replay
    (`CutState.pins`), which may decide otherwise."""

    stream: str
    channel: int
    kind: Literal["active", "inactive"]
    time: float
    index: int
    gen: int = 0


class Work(msgspec.Struct, array_like=True, kw_only=True):
    """Segmenter -> model actor: what every item for a model actor has. Not an item itself: each
    item says what it is by its type (`Infer`, or on the sequential route `Restore`, `Feed`,
    `CloseChannel`, `Drop`), and the model actor does what the type says.

    `work_id` names it (a packet's items are told apart by it, its `Done` lists it, and a model
    actor skips work numbered below its segmenter's first, `Forget.below`); `front` is whose
    inbox its answers go to; `trace` the stream's segment span (a traceparent)."""

    work_id: int
    stream: str
    front: int
    trace: str | None = None


class Infer(Work, tag="infer", kw_only=True):
    """A piece on its own, for any model: a region (a final, `is_final` True), a region so far
    (an interim, False) or a chunk (None). Its audio (16 kHz float32 mono) lies at `at`.

    `seq` is the piece's place among its channel's finals (or chunks); an interim carries the
    `seq` of the final it comes before, so the front can place it and drop it once stale.
    `attempt` counts the model actors it was running on when they died, plus one."""

    channel: int
    seq: int
    events_before: int
    start_time: float
    end_time: float
    is_final: bool | None
    at: Slice = NOWHERE
    attempt: int = 1
    gen: int = 0  # the stream's run (`Event.gen`), copied into its result


class ChannelWork(Work, kw_only=True):
    """The sequential route: an item for one channel of a stream bound to one model actor, which
    holds the channel's model state. `channels` is how many the stream has: the actor reports
    the stream's end once all of them are closed."""

    channel: int
    channels: int


class Restore(ChannelWork, tag="restore", kw_only=True):
    """(Re)start the channel's model state: from `state` (what a checkpoint's `snapshot` gave), or
    a fresh one when None, at 16 kHz sample `sample`, with `finals` finals already made. A
    channel's first item, and after a death or a replay the first again."""

    sample: int
    finals: int
    state: dict[str, Any] | None = None


class Feed(ChannelWork, tag="feed", kw_only=True):
    """The channel's next audio, samples [`start`, `end`), at `at`; `interim`: the client asked
    for interim results (the model's `Partial`s)."""

    start: int
    end: int
    interim: bool
    at: Slice = NOWHERE


class CloseChannel(ChannelWork, tag="close_channel", kw_only=True):
    """The channel's audio ended at `sample`: the model says its last words (`Partial`s too, if
    `interim`) and lets the state go."""

    sample: int
    interim: bool


class Drop(Work, tag="drop", kw_only=True):
    """Forget the sequential stream: its states go without a close, nothing more is said of it
    (its client left, or the stream failed)."""


Stateful = Restore | Feed | CloseChannel | Drop  # the sequential route's items
ToModel = Infer | Stateful  # every item a model actor takes


def audio_place(work: Work) -> Slice | None:
    """Where an item's audio lies in its packet's slab; None for an item that carries none."""
    return work.at if isinstance(work, Infer | Feed) else None


class Result(msgspec.Struct, tag="result", array_like=True):
    """Model -> front: the answer for one piece (or why there is none)."""

    stream: str
    channel: int
    seq: int
    events_before: int
    start_time: float
    end_time: float
    is_final: bool | None
    output: dict[str, Any] | None = None
    error: str | None = None
    gen: int = 0  # the run of its work (`Event.gen`)


class StreamEnd(msgspec.Struct, tag="end", array_like=True):
    """Segmenter -> front: the stream is flushed; this many finals (or chunks) and events per
    channel will have come."""

    stream: str
    results: list[int]
    events: list[int]
    gen: int = 0  # the run it ends (`Event.gen`)


class Failed(msgspec.Struct, tag="failed", array_like=True):
    """Any actor -> front: the stream cannot go on (bad data, lost state)."""

    stream: str
    message: str


class Notice(msgspec.Struct, tag="notice", array_like=True):
    """Any actor -> front: something the client should know that does not end the stream
    (audio the server had to drop, and how much)."""

    stream: str
    message: str


class Progress(msgspec.Struct, tag="progress", array_like=True):
    """Segmenter -> front: the stream's audio up to `time` is taken in, and these finals (or
    chunks) per channel cover it; once the front has released them, that audio is answered.
    The front bounds each stream's unanswered audio with it (backpressure per session).

    `checkpoint` is where the stream could be rebuilt from now; once the front has released
    every final it counts, the front keeps the stream's audio from there on only."""

    stream: str
    time: float
    results: list[int]
    checkpoint: Checkpoint
    gen: int = 0  # the run it speaks of (`Event.gen`)


class Load(msgspec.Struct, tag="load", array_like=True):
    """Segmenter -> every front (of every shard), twice a second: what the model actors are asked
    to do by this segmenter, for admission. `actors` is the number of model processes (live or
    restarting); `busy` is the model actors' wall time spent in model calls per second over the
    last seconds (1.0 = one actor always busy); `per_stream` the model time a stream costs per second of
    its audio, learned from each stream's answered finals (0 until there is one); `queue_delay_s`
    is how long the oldest final of a stream still open has waited for an actor (the last finals
    of stopped streams are a backlog that cannot grow: they are in `queued_audio_s` only)."""

    streams: int
    actors: int
    busy: float
    per_stream: float
    queue_delay_s: float
    queued_audio_s: float
    shard: int = 0  # whose segmenter saw this: a front admits by every shard's report at once
    costed_s: float = 0.0  # the audio `per_stream` was learned over: its weight among the shards' reports


class Ready(msgspec.Struct, tag="ready", array_like=True):
    """Model -> segmenter: a new process of a model index is up; it takes `capacity` packets at a
    time, each of up to `max_batch` items."""

    index: int
    pid: int
    capacity: int
    max_batch: int


class Forget(msgspec.Struct, tag="forget", array_like=True):
    """Segmenter -> model: a segmenter's first word to a model incarnation, before anything else
    it sends there: drop every sequential stream you hold for my shard. A segmenter that starts
    knows nothing of what an actor holds (it rebinds each replayed stream wherever it likes), so
    what the actor held for its predecessor would otherwise stay forever. Work of that shard
    numbered below `below` (this segmenter's first `work_id`: numbers grow across its restarts)
    is its predecessor's, still queued from that other connection: it is skipped, and a
    `Forget` with a lower `below` is a predecessor's, late. Other shards' work and streams are
    not touched: each shard's segmenter has its own numbers and its own deaths."""

    below: int
    shard: int = 0


class Want(msgspec.Struct, tag="want", array_like=True):
    """Segmenter -> model, with several shards: a final of this shard waits, and every actor it
    may use is busy with another shard's work: give it a turn when you come free."""

    shard: int


class Pass(msgspec.Struct, tag="pass", array_like=True):
    """Segmenter -> model: given a turn (`GRANTED`), this shard has nothing to send now (its
    final went to another actor): give the turn to the next."""

    shard: int


class Point(msgspec.Struct, array_like=True, frozen=True):
    """A checkpoint of a stateful model: after `work_id`, the channel's state is `state` (None: a
    fresh one) at `sample`, with `finals` finals made. The audio before it is never needed again."""

    stream: str
    channel: int
    work_id: int
    sample: int
    finals: int
    state: dict[str, Any] | None = None


Answer = Result | Progress | StreamEnd | Failed


GRANTED = -1  # `Running.shard`: your turn (you asked): hand this actor one packet now, or `Pass`
BUSY = -2  # `Running.shard`: count this actor busy (send nothing until it frees or grants you a turn)


class Running(msgspec.Struct, tag="running", array_like=True):
    """Model -> a shard's segmenter, only when there are several shards: whose call the actor
    begins (`shard` >= 0, to every shard), or whose turn it is to send (`GRANTED`, `BUSY`:
    actors/turns.py). Two uses. A model holds a packet of each shard at once, and when it dies
    only the one it was running spends its items an attempt; the others were only queued. And
    each shard's credit covers only its own packets: the turns keep two shards from handing an
    actor packets at the moment it comes free, one of which would wait a whole call there.
    (With one shard the oldest packet is the one running, and the credit is the whole: nothing
    is sent.)"""

    index: int
    pid: int
    shard: int


class Done(msgspec.Struct, tag="done", array_like=True):
    """Model -> segmenter: a packet's items are answered; a credit returns. `answers` are what
    the fronts must hear of them (results, and on the sequential route progress, ends and
    failures): they travel in the same message as the credit, so a model's death can never
    lose an answer that the dispatcher counts as given (the segmenter forwards them to each
    stream's front). `busy_s` is the wall time the model call took; `points` the checkpoints
    its stateful work reached."""

    index: int
    pid: int
    work_ids: list[int]
    busy_s: float
    points: list[Point] = []
    answers: list[Answer] = []


class Exited(msgspec.Struct, tag="exited", array_like=True):
    """Supervisor -> fronts, decoders, segmenters: a child process died (or was killed as hung).

    Sent at once, before any restart, so whoever held state in or work on that process acts
    now: the segmenter redoes a model's items elsewhere, a front fails the streams whose state
    lived in a dead decoder or segmenter, the decoder forgets a dead front's streams.
    """

    role: str
    index: int
    pid: int
    how: str


Message = (
    Open | Pcm | Frames | Close | Abort | Roster | Event | Infer | Restore | Feed | CloseChannel | Drop | Result
    | StreamEnd | Failed | Notice | Progress | Load | Ready | Running | Done | Exited | Forget | Want | Pass
)


class Packet(msgspec.Struct, array_like=True):
    """One ZeroMQ message: items for one destination, and the slab their audio lives in.

    The receiver releases the slab once it has read it (the producer never frees it)."""

    slab: BufferRef | None
    items: list[Message]


_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Packet] = msgspec.msgpack.Decoder(Packet)


def encode(packet: Packet) -> bytes:
    return _encoder.encode(packet)


def decode(data: bytes | memoryview) -> Packet:
    return _decoder.decode(data)


def stream_of(msg: Message) -> str | None:
    """The stream an item concerns (None for process-level items: Ready, Done, Exited, Load, Forget)."""
    stream: str | None = getattr(msg, "stream", None)
    return stream
