"""The client side of docs/protocol.md: requests, their validation, close codes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from streamer.runtime.config import Limits
from streamer.transport.messages import RouteName

# WebSocket close codes used by the protocol (RFC 6455 section 7.4.1).
NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED = 1003
INVALID = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL = 1011
TRY_LATER = 1013


@dataclass(frozen=True)
class RouteKind:
    """What a route promises its client, where the front's handling differs by route."""

    interims: bool  # interim results, if the client asks (the simple route's chunks have none)
    model_ordered: bool  # a stateful model numbers the finals and says where the stream ends, and
    # keeps its own account of replays (the sequential route); otherwise the segmenter does


ROUTES: dict[RouteName, RouteKind] = {
    "segmented": RouteKind(interims=True, model_ordered=False),
    "simple": RouteKind(interims=False, model_ordered=False),
    "sequential": RouteKind(interims=True, model_ordered=True),
}


class Format(msgspec.Struct, forbid_unknown_fields=True):
    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool


class Start(msgspec.Struct, tag_field="request", tag="start", forbid_unknown_fields=True):
    format: Format
    trace_id: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    interim_results: bool = False
    token: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class Stop(msgspec.Struct, tag_field="request", tag="stop", forbid_unknown_fields=True):
    disconnect: bool = True


Request = Start | Stop
_decoder: msgspec.json.Decoder[Start | Stop] = msgspec.json.Decoder(Request)


class ProtocolError(Exception):
    """A client mistake: `message` goes to the client, `code` closes the socket if set."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def parse(text: str) -> Start | Stop:
    try:
        return _decoder.decode(text)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"invalid request: {e}", INVALID) from None
    except msgspec.DecodeError as e:
        raise ProtocolError(f"invalid JSON: {e}", INVALID) from None


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def is_traceparent(value: str) -> bool:
    """A W3C traceparent: a client's trace context, and nothing else, reaches our spans and logs."""
    return _TRACEPARENT.fullmatch(value) is not None


def check_format(fmt: Format, limits: Limits) -> None:
    """Raise `ProtocolError` (1003) for a format this server does not take."""
    if (fmt.bit_depth, fmt.is_float) not in ((16, False), (32, True)):
        raise ProtocolError(
            f"unsupported format: bit_depth {fmt.bit_depth} with is_float {str(fmt.is_float).lower()} "
            "(supported: 16-bit integer, 32-bit float)", UNSUPPORTED)
    if not 1 <= fmt.channels <= limits.max_channels:
        raise ProtocolError(f"unsupported format: channels must be 1..{limits.max_channels}", UNSUPPORTED)
    if not limits.min_sample_rate <= fmt.sample_rate <= limits.max_sample_rate:
        raise ProtocolError(
            f"unsupported format: sample_rate must be {limits.min_sample_rate}..{limits.max_sample_rate}",
            UNSUPPORTED)


def error(message: str, channel: int = 0) -> dict[str, Any]:
    return {"type": "error", "channel": channel, "message": message}


def warning(message: str, channel: int = 0) -> dict[str, Any]:
    """Not an error yet: the session goes on, but will not if nothing changes (idle, length)."""
    return {"type": "warning", "channel": channel, "message": message}
