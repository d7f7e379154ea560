"""Everything that crosses a ZeroMQ socket, as typed msgpack structs.

Audio never appears here: messages that concern audio carry a `BufferRef`. Each message
names the stream it belongs to (a stream is one start..stop on one WebSocket), so actors
keep state per stream and a late message of an ended stream is recognised and dropped.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from transport.shm import BufferRef

Route = Literal["segmented", "simple"]


class StreamStart(msgspec.Struct, tag="start"):
    """Front -> decoder -> segmenter: a stream begins with this format."""

    stream: str
    route: Route
    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool
    interim: bool
    trace: str | None = None


class PcmChunk(msgspec.Struct, tag="pcm"):
    """Front -> decoder: raw client bytes (interleaved, maybe split mid-sample)."""

    stream: str
    seq: int
    buf: BufferRef


class Frames(msgspec.Struct, tag="frames"):
    """Decoder -> segmenter: float32 at 16 kHz, channel-major (channels x frames)."""

    stream: str
    seq: int
    channels: int
    frames: int
    buf: BufferRef | None  # None when a chunk decoded to no frame yet


class StreamStop(msgspec.Struct, tag="stop"):
    """Flush everything buffered for the stream, then report its end."""

    stream: str


class StreamAbort(msgspec.Struct, tag="abort"):
    """The client is gone: drop the stream's state, produce nothing more."""

    stream: str


class Event(msgspec.Struct, tag="event"):
    """Segmenter -> front: voice activity changed on a channel."""

    stream: str
    channel: int
    kind: Literal["active", "inactive"]
    time: float


class Work(msgspec.Struct, tag="work"):
    """Segmenter -> model: run the model on one piece of audio (16 kHz float32 mono)."""

    work_id: int
    stream: str
    channel: int
    seq: int
    events_before: int
    start_time: float
    end_time: float
    is_final: bool | None
    buf: BufferRef | None  # filled in when the item is handed to an actor
    attempt: int = 1
    trace: str | None = None


class Result(msgspec.Struct, tag="result"):
    """Model -> front: the answer for one `Work` (or why there is none)."""

    stream: str
    channel: int
    seq: int
    events_before: int
    start_time: float
    end_time: float
    is_final: bool | None
    output: dict[str, Any] | None = None
    error: str | None = None


class StreamEnd(msgspec.Struct, tag="end"):
    """Segmenter -> front: the stream is flushed; this many results per channel will come."""

    stream: str
    results: list[int]
    events: list[int]


class StreamFailed(msgspec.Struct, tag="failed"):
    """Any actor -> front: the stream cannot go on (bad data, lost state)."""

    stream: str
    message: str


class Ready(msgspec.Struct, tag="ready"):
    """Model -> segmenter: this incarnation of a slot is up and takes `capacity` items."""

    slot: int
    pid: int
    capacity: int


class Done(msgspec.Struct, tag="done"):
    """Model -> segmenter: an item is answered; its buffer may go and a credit returns."""

    slot: int
    pid: int
    work_id: int


class Notice(msgspec.Struct, tag="notice"):
    """Any actor -> front: something the client should know that does not end the stream
    (audio the server had to drop, and how much)."""

    stream: str
    message: str


class Progress(msgspec.Struct, tag="progress"):
    """Segmenter -> front: the stream's audio up to `time` is taken in, and these results per
    channel cover it; once the front has released them, that audio is answered. The front
    bounds each stream's unanswered audio with it (backpressure per session)."""

    stream: str
    time: float
    results: list[int]


class Exited(msgspec.Struct, tag="exited"):
    """Supervisor -> front, decoder, segmenter: a child process died (or was killed as hung).

    Sent at once, before any restart, so whoever held state in or work on that process
    acts now: the segmenter redoes a model's items elsewhere, the front fails the streams
    whose state lived in a dead decoder or segmenter, the decoder forgets a dead front's.
    """

    role: str
    slot: int
    pid: int
    how: str


Message = (
    StreamStart | PcmChunk | Frames | StreamStop | StreamAbort | Event | Work | Result
    | StreamEnd | StreamFailed | Ready | Done | Exited | Progress | Notice
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes | memoryview) -> Message:
    return _decoder.decode(data)
