"""The supervisor's published view of the group: who runs, where, and how each is doing.

The supervisor writes it atomically (`publish`) whenever something changes and on
heartbeats; every front reads it (`read`) for `/api/v1/health`, `/api/v1/actors` and the
group's `/metrics`, and the tests and benchmarks read the same file to find processes. One
typed shape, one reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

STATE_FILE = "actors.json"


class Member(msgspec.Struct, omit_defaults=True):
    """One place of the group (role and index) and the process filling it now."""

    role: str
    index: int
    name: str
    pid: int | None
    state: str  # starting | running | restarting | stopped
    restarts: int
    uptime_s: float
    last_exit: str | None
    metrics_port: int | None
    processed: int | None = None  # from the stage's last heartbeat
    inflight: int | None = None
    rtf: float | None = None
    held: int | None = None  # a model actor's sequential streams (each a model state in its memory)
    process: str | None = None  # the process it shares with other actors (`[actors] placement`), by name


class Group(msgspec.Struct):
    run_id: str
    pid: int  # the supervisor's
    metrics_port: int | None
    actors: list[Member]

    def running_roles(self) -> set[str]:
        return {a.role for a in self.actors if a.state == "running"}


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Group)


def publish(run_dir: str, group: Group) -> None:
    path = Path(run_dir, STATE_FILE)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_encoder.encode(group))
    os.replace(tmp, path)


def read(run_dir: str) -> Group | None:
    """The last published state (None before the supervisor has written one)."""
    try:
        return _decoder.decode(Path(run_dir, STATE_FILE).read_bytes())
    except (FileNotFoundError, msgspec.DecodeError):
        return None
