"""Between the WebSocket's JSON objects and the gRPC messages: one mapping, used by the server
and the client, so both transports carry the same results."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from streamer.api import streamer_pb2 as pb

_TIMES = ("time", "start_time", "end_time")
_KNOWN = {"type", "channel", "message", "is_final", *_TIMES}


def to_response(item: dict[str, Any]) -> pb.Response:
    """A server message (what a WebSocket client gets as JSON) as a gRPC `Response`; the model's
    own fields go in `output`."""
    r = pb.Response(type=item["type"], channel=item.get("channel", 0), message=item.get("message", ""))
    for key in _TIMES:
        if key in item:
            setattr(r, key, item[key])
    if item.get("is_final") is not None:
        r.is_final = item["is_final"]
    output = {k: v for k, v in item.items() if k not in _KNOWN}
    if output:
        struct = struct_pb2.Struct()
        struct.update(output)
        r.output.CopyFrom(struct)
    return r


def from_response(r: pb.Response) -> dict[str, Any]:
    """A gRPC `Response` as the JSON object a WebSocket client gets (protobuf keeps numbers as
    doubles: whole ones come back as ints)."""
    m: dict[str, Any] = {"type": r.type, "channel": r.channel}
    for key in (*_TIMES, "is_final"):
        if r.HasField(key):
            m[key] = getattr(r, key)
    if r.type in ("error", "warning"):
        m["message"] = r.message
    for k, v in MessageToDict(r.output).items():
        m[k] = int(v) if isinstance(v, float) and v.is_integer() else v
    return m


def start_request(fmt: dict[str, Any], interim: bool = False, trace_id: str = "") -> pb.Request:
    return pb.Request(start=pb.Start(format=pb.Format(**fmt), interim_results=interim, trace_id=trace_id))
