"""The sequential route inside a model actor: a stateful model's streams, their checkpoints, and
what the front hears of them.

Each channel of a stream bound to this actor has the model's state, how many finals it has
made, and where its audio stands. Items come in order (`actors/binding.py`), and each does what
its type says: `Restore` (re)builds a channel's state, `Feed` runs the model on its next audio,
`CloseChannel` ends it, `Drop` forgets the stream.

A feed's `Partial`s become interim results (if the client asked), its `Final`s final ones,
numbered per channel. After a feed the state may be a checkpoint: the model returned a
`Final` and can snapshot its state, or it returned a `Final` that ends where the fed audio
ends (its state is then a fresh one), or it says it is at rest. A checkpoint goes back to
the dispatcher (in `Done`: it may forget the audio before it) and to the front (in
`Progress`: where a replay after the decoder's or segmenter's death starts from, and the
stream's answered audio for its in-flight budget). When every channel is closed, the front
hears the stream's end and how many finals each channel made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streamer.actors.models import Final, ModelError, Partial, Said, Snapshots, StreamModel
from streamer.actors.models.base import Audio
from streamer.runtime import logs
from streamer.transport.messages import (
    MODEL_RATE,
    Answer,
    ChannelWork,
    Checkpoint,
    CloseChannel,
    CutState,
    Drop,
    Failed,
    Feed,
    Point,
    Progress,
    Restore,
    Result,
    Stateful,
    StreamEnd,
)

log = logging.getLogger("model")
PROGRESS_EVERY_S = 0.5


@dataclass
class Channel:
    state: Any
    finals: int
    at: int  # the sample its next audio starts at
    point: Point  # its last checkpoint


@dataclass
class Held:
    """A sequential stream bound to this actor."""

    front: int
    channels: int
    chans: dict[int, Channel] = field(default_factory=dict)
    closed: set[int] = field(default_factory=set)
    told_at: int = 0  # audio position of the last Progress
    moved: bool = False  # a checkpoint since the last Progress


def in_stream_time(output: dict[str, Any], offset_s: float) -> dict[str, Any]:
    """Word times a model gives from the start of its piece, moved to the stream's time."""
    words = output.get("words")
    if not isinstance(words, list) or not offset_s:
        return output
    moved = [{**w, "start": round(w["start"] + offset_s, 3), "end": round(w["end"] + offset_s, 3)}
             if isinstance(w, dict) and "start" in w and "end" in w else w for w in words]
    return {**output, "words": moved}


def starts_at(w: Restore | Feed | CloseChannel) -> int:
    """The 16 kHz sample an item of a channel starts at."""
    return w.start if isinstance(w, Feed) else w.sample


class States:
    def __init__(self, model: StreamModel) -> None:
        self.model = model
        self.held: dict[str, Held] = {}
        self._snapshots = isinstance(model, Snapshots)
        self._at_rest = getattr(model, "at_rest", None)

    def forget(self, of_front: Callable[[int], bool]) -> int:
        """Drop every stream whose front `of_front` names (a new segmenter of their shard rebinds
        them as it likes); how many there were. As for `Drop`, their states are let go without
        `close`: nothing more of them is wanted."""
        gone = [stream for stream, held in self.held.items() if of_front(held.front)]
        for stream in gone:
            del self.held[stream]
        return len(gone)

    def handle(self, w: Stateful, audio: Audio, out: list[Answer], points: list[Point]) -> None:
        """Run one item; what the front must hear goes to `out`, checkpoints to `points`."""
        if isinstance(w, Drop):
            self.held.pop(w.stream, None)
            return
        held = self.held.get(w.stream)
        if held is None:  # (a stream met first by a feed or a close: its model failed it, and it goes on)
            held = self.held[w.stream] = Held(w.front, w.channels)
        try:
            match w:
                case Restore():
                    self._restore(held, w)
                case Feed():
                    self._feed(held, w, audio, out, points)
                case CloseChannel():
                    self._close(held, w, out)
        except Exception as e:  # the model failed this stream: its state cannot be trusted any more
            self.held.pop(w.stream, None)
            at = starts_at(w) / MODEL_RATE
            with logs.bound(w.stream, logs.trace_of(w.trace)):
                log.error("the model failed the stream at %.2f s: %r", at, e)
            why = str(e) if isinstance(e, ModelError) else type(e).__name__
            out.append(Failed(w.stream, f"inference failed at {at:.2f} s: {why}"))

    def _restore(self, held: Held, w: Restore) -> None:
        at = w.sample
        if w.state is not None and isinstance(self.model, Snapshots):
            state = self.model.restore(w.state)
        else:
            state = self.model.open()
        held.chans[w.channel] = Channel(state, w.finals, at,
                                        Point(w.stream, w.channel, w.work_id, at, w.finals, w.state))
        held.closed.discard(w.channel)

    def _channel(self, held: Held, w: ChannelWork) -> Channel:
        chan = held.chans.get(w.channel)
        if chan is None:  # no restore came first: a fresh state from the stream's start
            chan = held.chans[w.channel] = Channel(self.model.open(), 0, 0, Point(w.stream, w.channel, 0, 0, 0))
        return chan

    def _feed(self, held: Held, w: Feed, audio: Audio, out: list[Answer], points: list[Point]) -> None:
        chan = self._channel(held, w)
        at = w.start
        said = self.model.feed(chan.state, audio, at)
        chan.at = at + audio.shape[0]
        self._say(held, w, chan, said, out)
        if self._checkpoint(chan, said):
            snap = self.model.snapshot(chan.state) if isinstance(self.model, Snapshots) else None
            chan.point = Point(w.stream, w.channel, w.work_id, chan.at, chan.finals, snap)
            points.append(chan.point)
            held.moved = True
        position = max(c.at for c in held.chans.values())
        if held.moved or position - held.told_at >= PROGRESS_EVERY_S * MODEL_RATE:
            held.told_at, held.moved = position, False
            out.append(self._progress(w.stream, held))

    def _checkpoint(self, chan: Channel, said: list[Said]) -> bool:
        finals = [s for s in said if isinstance(s, Final)]
        if finals and (self._snapshots or finals[-1].end == chan.at):
            return True
        return bool(self._at_rest is not None and not finals and self._at_rest(chan.state)
                    and chan.point.sample < chan.at)

    def _close(self, held: Held, w: CloseChannel, out: list[Answer]) -> None:
        chan = self._channel(held, w)
        self._say(held, w, chan, self.model.close(chan.state, chan.at), out)
        held.closed.add(w.channel)
        if len(held.closed) >= held.channels:
            finals = [held.chans[ch].finals if ch in held.chans else 0 for ch in range(held.channels)]
            out.append(StreamEnd(w.stream, finals, [0] * held.channels))
            del self.held[w.stream]

    def _say(self, held: Held, w: Feed | CloseChannel, chan: Channel, said: list[Said], out: list[Answer]) -> None:
        for s in said:
            start, end = s.start / MODEL_RATE, s.end / MODEL_RATE
            output = in_stream_time(s.output, start)
            if isinstance(s, Final):
                out.append(Result(w.stream, w.channel, chan.finals, 0, start, end, True, output))
                chan.finals += 1
            elif isinstance(s, Partial) and w.interim:
                out.append(Result(w.stream, w.channel, chan.finals, 0, start, end, False, output))

    @staticmethod
    def _progress(stream: str, held: Held) -> Progress:
        chans = [held.chans.get(ch) for ch in range(held.channels)]
        states = [CutState(c.point.sample, False, c.point.finals, 0, c.point.state) if c else CutState(0, False, 0, 0)
                  for c in chans]
        time = max((c.at for c in chans if c), default=0) / MODEL_RATE
        return Progress(stream, time, [c.finals if c else 0 for c in chans],
                        Checkpoint(min(s.sample for s in states), states))
