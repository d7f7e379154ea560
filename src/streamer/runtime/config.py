"""Configuration: one TOML of defaults, a user file over it, environment variables over both.

The defaults file is the single source of every key; environment names are derived from
it (`STREAMER_<SECTION>_<KEY>`), so a variable for a key that does not exist is impossible
to write by accident and a typo in a file is an error, not a silent default.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

ENV_PREFIX = "STREAMER"


class Server(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    port: int
    grpc_port: int
    run_dir: str
    stop_timeout_s: float
    log_level: str
    admin_public: bool
    trusted_proxies: list[str]

    def __post_init__(self) -> None:
        """A proxy list that cannot be read must stop the start, not quietly trust nobody (or,
        worse, be read differently by the front that uses it). One port for both APIs would not
        fail either: both listen with SO_REUSEPORT, and the kernel would hand half the HTTP
        clients to the gRPC server and the other way round."""
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"server.grpc_port: {self.grpc_port} is also server.port; give gRPC a port of its own "
                             "(or 0: off)")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(f"server.trusted_proxies: {proxy!r} is not an address or a network") from None


class Actors(msgspec.Struct, forbid_unknown_fields=True):
    models: int
    fronts: int
    placement: Literal["split", "paired", "shards"]  # which actors share a process (docs/placement.md)
    shards: int  # decoder-segmenter pipelines, each carrying the sessions of its fronts


class Front(msgspec.Struct, forbid_unknown_fields=True):
    coalesce_ms: float
    read_hold_ms: Annotated[float, msgspec.Meta(ge=0, le=100)]  # longer would hold up pings and closes
    read_hold_sessions: int
    event_loop: str


class Admission(msgspec.Struct, forbid_unknown_fields=True):
    max_busy: float
    max_queue_delay_s: float


class Metrics(msgspec.Struct, forbid_unknown_fields=True):
    host: str
    base_port: int


class RolePolicy(msgspec.Struct, forbid_unknown_fields=True):
    intensity: int
    period_s: float
    backoff_step_s: float
    backoff_max_s: float
    hang_timeout_s: float


class Supervision(msgspec.Struct, forbid_unknown_fields=True):
    heartbeat_s: float
    start_timeout_s: float
    stop_timeout_s: float
    drain_s: float
    front: RolePolicy
    decoder: RolePolicy
    segmenter: RolePolicy
    model: RolePolicy

    def role(self, name: str) -> RolePolicy:
        policy: RolePolicy = getattr(self, name)
        return policy


class FakeModel(msgspec.Struct, forbid_unknown_fields=True):
    delay: float
    constant_factor: float
    jitter: float
    failure_rate: float
    panic_rate: float
    warmup_penalty: float
    mode: str
    final_every_s: float


class PocketsphinxModel(msgspec.Struct, forbid_unknown_fields=True):
    grammar: str
    keyphrase: str
    kws_threshold: float
    hangover_ms: int
    max_utterance_s: float
    vad_aggressiveness: int


class Scheduling(msgspec.Struct, forbid_unknown_fields=True):
    model_nice: int
    model_batch: bool
    pin: bool


class Model(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    max_inflight: int
    max_batch: int
    max_attempts: int
    options: dict[str, Any]
    fake: FakeModel
    pocketsphinx: PocketsphinxModel


class Segmenter(msgspec.Struct, forbid_unknown_fields=True):
    vad: str
    vad_aggressiveness: int
    hangover_ms: int
    min_speech_ms: int
    pad_ms: int
    max_segment_s: float
    interim_interval_s: float
    interim_growth: float
    chunk_s: float
    max_pending_s: float


class Pools(msgspec.Struct, forbid_unknown_fields=True):
    front_slot_bytes: int
    front_slots: int
    decoder_slot_bytes: int
    decoder_slots: int
    segmenter_slot_bytes: int
    segmenter_slots: int


Positive = Annotated[float, msgspec.Meta(gt=0)]


class Limits(msgspec.Struct, forbid_unknown_fields=True):
    max_sessions: int
    max_frame_bytes: int
    max_channels: int
    min_sample_rate: int
    max_sample_rate: int
    idle_timeout_s: Positive  # (a limit of 0 would be due at every moment: `front/watchdog.py`)
    max_session_s: Positive
    max_inflight_audio_s: float
    max_inflight_bytes: int
    max_outbox: int
    send_timeout_s: float
    socket_send_buffer: int
    socket_receive_buffer: int
    read_ahead_bytes: int
    held_warning_s: float
    stall_timeout_s: float


class Security(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    origins: list[str]
    auth_timeout_s: Positive


class Config(msgspec.Struct, forbid_unknown_fields=True):
    server: Server
    actors: Actors
    front: Front
    admission: Admission
    metrics: Metrics
    supervisor: Supervision
    model: Model
    scheduling: Scheduling
    segmenter: Segmenter
    pools: Pools
    limits: Limits
    security: Security

    @property
    def model_count(self) -> int:
        return self.actors.models if self.actors.models > 0 else (os.cpu_count() or 1)

    @property
    def shard_count(self) -> int:
        return self.actors.shards if self.actors.shards > 0 else (os.cpu_count() or 1)

    @property
    def front_count(self) -> int:
        return self.actors.fronts if self.actors.fronts > 0 else (os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for handing to spawned children."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


def defaults() -> dict[str, Any]:
    text = resources.files("streamer.runtime").joinpath("defaults.toml").read_text()
    return tomllib.loads(text)


FREE_FORM = {"model.options"}  # tables whose keys are the user's (a plug-in model's arguments)


def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str = "") -> None:
    for key, value in over.items():
        if key not in base:
            raise ValueError(f"unknown configuration key {where}{key}")
        if f"{where}{key}" in FREE_FORM:
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key} must be a table")
            base[key] = dict(value)
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}{key} must be a table")
            _merge(base[key], value, f"{where}{key}.")
        else:
            base[key] = value


def _parse_env(raw: str, like: object, name: str) -> object:
    if isinstance(like, list):
        return _parse_list(raw, name)
    try:
        if isinstance(like, bool):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(like, int):
            return int(raw)
        if isinstance(like, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {type(like).__name__}") from None
    return raw


def _apply_env(tree: dict[str, Any], env: Mapping[str, str], path: tuple[str, ...] = ()) -> None:
    for key, value in tree.items():
        here = (*path, key)
        name = "_".join((ENV_PREFIX, *here)).upper()
        if ".".join(here) in FREE_FORM:
            if name in env:
                tree[key] = _parse_table(env[name], name)
        elif isinstance(value, dict):
            _apply_env(value, env, here)
        elif name in env:
            tree[key] = _parse_env(env[name], value, name)


def _parse_table(raw: str, name: str) -> dict[str, Any]:
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON object: {e}") from None
    if not isinstance(table, dict):
        raise ValueError(f"{name} must be a JSON object")
    return table


def _parse_list(raw: str, name: str) -> list[Any]:
    """A list key (`[security] origins` ...): a JSON array, as a free-form table takes JSON, or
    plain comma-separated items (`127.0.0.1,10.0.0.0/8`), which need no quoting where JSON's
    quotes would not survive (a Procfile line exported into a systemd `ExecStart`)."""
    if not raw.lstrip().startswith("["):
        return [item.strip() for item in raw.split(",") if item.strip()]
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON array or comma-separated: {e}") from None
    if not isinstance(items, list):
        raise ValueError(f"{name} must be a JSON array or comma-separated")
    return items


def load(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the file in STREAMER_CONFIG, then STREAMER_* variables, then `overrides`."""
    env = os.environ if env is None else env
    tree = defaults()
    path = env.get(f"{ENV_PREFIX}_CONFIG")
    if path:
        with open(path, "rb") as f:
            _merge(tree, tomllib.load(f))
    _apply_env(tree, env)
    if overrides:
        _merge(tree, overrides)
    return msgspec.convert(tree, Config)


def from_dict(data: Mapping[str, Any]) -> Config:
    return msgspec.convert(data, Config)
