from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Format(_message.Message):
    __slots__ = ("channels", "sample_rate", "bit_depth", "is_float")
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IS_FLOAT_FIELD_NUMBER: _ClassVar[int]
    channels: int
    sample_rate: int
    bit_depth: int
    is_float: bool
    def __init__(self, channels: _Optional[int] = ..., sample_rate: _Optional[int] = ..., bit_depth: _Optional[int] = ..., is_float: _Optional[bool] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("format", "trace_id", "interim_results")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    format: Format
    trace_id: str
    interim_results: bool
    def __init__(self, format: _Optional[_Union[Format, _Mapping]] = ..., trace_id: _Optional[str] = ..., interim_results: _Optional[bool] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ("disconnect",)
    DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    disconnect: bool
    def __init__(self, disconnect: _Optional[bool] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("start", "audio", "stop")
    START_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    start: Start
    audio: bytes
    stop: Stop
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., audio: _Optional[bytes] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("type", "channel", "time", "start_time", "end_time", "is_final", "message", "output")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    type: str
    channel: int
    time: float
    start_time: float
    end_time: float
    is_final: bool
    message: str
    output: _struct_pb2.Struct
    def __init__(self, type: _Optional[str] = ..., channel: _Optional[int] = ..., time: _Optional[float] = ..., start_time: _Optional[float] = ..., end_time: _Optional[float] = ..., is_final: _Optional[bool] = ..., message: _Optional[str] = ..., output: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...
