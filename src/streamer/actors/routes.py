"""The three routes as the segmenter runs them: one strategy per route, chosen when a stream opens.

A route says, for a stream of it: which cutters cut each channel's audio (`cutters`), what
the model actors are sent when the stream opens (`opened`) and for each piece the cutters make
(`piece`), what its front hears of how far its audio is taken in (`taken`), how it ends
(`closed`), and how far an answered item of it reaches into its audio (`answered`, for the
load report's cost per stream). The segmenter does the rest the same way for every route:
the stream's record (`SegmenterStream`), its audio in, its events out, its failures.

* `Segmented`: a VAD per channel (`SpeechRegions`); each region, and each interim of it, is a
  piece on its own (`Infer`).
* `Simple`: fixed chunks (`FixedChunks`), each a piece on its own; no events.
* `Sequential`: every sample, in order (`Passthrough`), to the one model actor the stream is
  bound to (`actors/binding.py`): a `Restore` per channel when it opens, a `Feed` per piece, a
  `CloseChannel` per channel at its end. Its progress, checkpoints, finals and end are its
  model's to say (`actors/states.py`), not the segmenter's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from opentelemetry.trace import INVALID_SPAN, Span

from streamer.actors.dispatch import Dispatcher
from streamer.actors.pcm import MODEL_RATE
from streamer.actors.regions import Cutter, FixedChunks, Passthrough, Piece, RegionRules, SpeechRegions
from streamer.runtime import config
from streamer.runtime.topology import front_inbox
from streamer.transport.messages import (
    Checkpoint,
    CloseChannel,
    Feed,
    Infer,
    Message,
    Open,
    Progress,
    Restore,
    RouteName,
    StreamEnd,
    Work,
    align,
)

PROGRESS_EVERY_S = 0.5  # how often a front hears how far a stream's audio is taken in

Emit = Callable[[str, Message], None]  # the segmenter's `emit`: an item for a front, in this turn's packet


@dataclass
class SegmenterStream:
    """One stream as the segmenter sees it."""

    start: Open
    route: Route
    cutters: list[Cutter]
    results: list[int]  # finals (or chunks) so far, per channel
    events: list[int]
    span: Span = INVALID_SPAN  # "segment": parent of every inference of the stream
    work_trace: str | None = None  # what each item of its work carries: the segment span's traceparent
    taken_s: float = 0.0  # audio consumed so far (seconds per channel)
    told_s: float = 0.0  # last `Progress` sent
    model_s: float = 0.0  # model call time spent on its items
    answered_s: float = 0.0  # the end of its latest answered final (stream seconds)
    lost: bool = False  # some of its audio was reclaimed: nothing more until the front's replay

    @property
    def stream(self) -> str:
        return self.start.stream

    @property
    def front(self) -> str:
        return front_inbox(self.start.front)


def checkpoint_of(state: SegmenterStream) -> Checkpoint:
    """Where the stream could be rebuilt from now: every channel's own point, and the replay's
    start at or before all of them, on a whole input sample."""
    channels = [c.checkpoint() for c in state.cutters]
    return Checkpoint(align(min(c.sample for c in channels), state.start.sample_rate), channels)


class Route(ABC):
    """What the segmenter does with a stream of one route. One instance per route and segmenter,
    shared by its streams: everything of one stream is in its `SegmenterStream`."""

    name: ClassVar[RouteName]

    def __init__(self, cfg: config.Segmenter, dispatcher: Dispatcher, emit: Emit) -> None:
        self.cfg = cfg
        self.dispatcher = dispatcher
        self.emit = emit

    @abstractmethod
    def cutters(self, start: Open) -> list[Cutter]:
        """The stream's cutters: fresh, or rebuilt from the checkpoint a replay starts at."""

    @abstractmethod
    def opened(self, s: SegmenterStream, cp: Checkpoint) -> None:
        """The stream has opened, from `cp` (its start, or where a replay starts)."""

    @abstractmethod
    def piece(self, s: SegmenterStream, ch: int, piece: Piece) -> None:
        """A piece of channel `ch` that its cutter made: work for a model actor."""

    @abstractmethod
    def taken(self, s: SegmenterStream) -> None:
        """A turn's audio of the stream is taken in (`s.taken_s` counts it)."""

    @abstractmethod
    def closed(self, s: SegmenterStream) -> None:
        """The client said `stop` and the cutters are flushed: the stream's end."""

    @abstractmethod
    def answered(self, work: Work) -> float:
        """How far into the stream's audio an answered item of it reaches, in seconds (0: it says
        nothing of that)."""


class Stateless(Route):
    """A route whose pieces any model actor answers on its own, each a result (`Infer`): the
    segmenter numbers them, tells the front how far the stream is taken in, and ends it."""

    def opened(self, s: SegmenterStream, cp: Checkpoint) -> None:
        pass  # nothing to send before the first piece: no model actor holds anything of the stream

    def piece(self, s: SegmenterStream, ch: int, piece: Piece) -> None:
        work = Infer(work_id=self.dispatcher.new_id(), stream=s.stream, front=s.start.front, trace=s.work_trace,
                     channel=ch, seq=s.results[ch], events_before=s.events[ch], start_time=piece.start / MODEL_RATE,
                     end_time=piece.end / MODEL_RATE, is_final=piece.is_final, gen=s.start.gen)
        if piece.is_final is not False:  # an interim takes the number of the final it comes before
            s.results[ch] += 1
        self.dispatcher.submit(work, piece.audio)

    def taken(self, s: SegmenterStream) -> None:
        if s.taken_s - s.told_s >= PROGRESS_EVERY_S:
            s.told_s = s.taken_s
            self.emit(s.front, Progress(s.stream, s.taken_s, list(s.results), checkpoint_of(s), s.start.gen))

    def closed(self, s: SegmenterStream) -> None:
        s.span.set_attribute("streamer.results", sum(s.results))
        self.emit(s.front, StreamEnd(s.stream, s.results, s.events, s.start.gen))

    def answered(self, work: Work) -> float:
        return work.end_time if isinstance(work, Infer) and work.is_final is not False else 0.0


class Segmented(Stateless):
    name = "segmented"

    def __init__(self, cfg: config.Segmenter, dispatcher: Dispatcher, emit: Emit) -> None:
        super().__init__(cfg, dispatcher, emit)
        self.rules = RegionRules(cfg.vad_aggressiveness, cfg.min_speech_ms, cfg.hangover_ms, cfg.pad_ms,
                                 cfg.max_segment_s, cfg.interim_interval_s, cfg.interim_growth, cfg.vad)

    def cutters(self, start: Open) -> list[Cutter]:
        cp = start.resume
        if cp is None:
            return [SpeechRegions(self.rules, start.interim) for _ in range(start.channels)]
        return [SpeechRegions.resume(self.rules, start.interim, c, cp.sample) for c in cp.channels]


class Simple(Stateless):
    name = "simple"

    def cutters(self, start: Open) -> list[Cutter]:
        cp = start.resume
        if cp is None:
            return [FixedChunks(self.cfg.chunk_s) for _ in range(start.channels)]
        return [FixedChunks.resume(self.cfg.chunk_s, c, cp.sample) for c in cp.channels]


class Sequential(Route):
    """Every sample to one stateful model, in order: the stream's progress, checkpoints, finals
    and end are its model actor's to say, and reach the front from there."""

    name = "sequential"

    def cutters(self, start: Open) -> list[Cutter]:
        cp = start.resume
        if cp is None:
            return [Passthrough() for _ in range(start.channels)]
        return [Passthrough.resume(c, cp.sample) for c in cp.channels]

    def opened(self, s: SegmenterStream, cp: Checkpoint) -> None:
        """The model's state for each channel, from scratch or the checkpoint's."""
        for ch, c in enumerate(cp.channels):
            self.dispatcher.submit_sequential(Restore(
                work_id=self.dispatcher.new_id(), stream=s.stream, front=s.start.front, trace=s.work_trace,
                channel=ch, channels=s.start.channels, sample=c.sample, finals=c.finals, state=c.model))

    def piece(self, s: SegmenterStream, ch: int, piece: Piece) -> None:
        self.dispatcher.submit_sequential(Feed(
            work_id=self.dispatcher.new_id(), stream=s.stream, front=s.start.front, trace=s.work_trace, channel=ch,
            channels=s.start.channels, start=piece.start, end=piece.end, interim=s.start.interim), piece.audio)

    def taken(self, s: SegmenterStream) -> None:
        pass  # its progress and checkpoints are its model's: its actor says them

    def closed(self, s: SegmenterStream) -> None:
        """How many finals there were is the model's to say: each channel's close goes to it."""
        for ch, cutter in enumerate(s.cutters):
            self.dispatcher.submit_sequential(CloseChannel(
                work_id=self.dispatcher.new_id(), stream=s.stream, front=s.start.front, trace=s.work_trace,
                channel=ch, channels=s.start.channels, sample=cutter.checkpoint().sample, interim=s.start.interim))

    def answered(self, work: Work) -> float:
        match work:
            case Feed():
                return work.end / MODEL_RATE
            case Restore() | CloseChannel():
                return work.sample / MODEL_RATE
        return 0.0


def routes(cfg: config.Segmenter, dispatcher: Dispatcher, emit: Emit) -> dict[RouteName, Route]:
    """One of each route, by the name an `Open` gives."""
    return {r.name: r(cfg, dispatcher, emit) for r in (Segmented, Simple, Sequential)}
