"""ZeroMQ PUSH/PULL over ipc:// in the private run directory.

Every socket gets a short linger: ZeroMQ's default (wait forever for unsent messages)
turns a stopped peer into a hung shutdown. Endpoints are named by what they receive, and
the stable side binds: each actor binds its own inbox, producers connect to it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import prometheus_client
import zmq

from transport.messages import Message, decode, encode

LINGER_MS = 200

MESSAGES = prometheus_client.Counter("streamer_messages", "ZeroMQ messages this process sent or received",
                                     ["direction"])
_sent, _received = MESSAGES.labels("out"), MESSAGES.labels("in")


def endpoint(run_dir: str | Path, name: str) -> str:
    """The ipc address of an inbox; ipc paths are limited to ~107 bytes, so keep names short."""
    path = os.path.join(str(run_dir), f"{name}.sock")
    if len(path) > 100:
        raise ValueError(f"ipc path too long for a unix socket: {path}")
    return f"ipc://{path}"


def inbox(ctx: zmq.Context[zmq.Socket[bytes]], run_dir: str | Path, name: str) -> zmq.Socket[bytes]:
    """A bound PULL socket: what this process receives."""
    sock = ctx.socket(zmq.PULL)
    bind_inbox(sock, run_dir, name)
    return sock


def bind_inbox(sock: zmq.Socket[Any], run_dir: str | Path, name: str) -> None:
    """Bind `sock` (sync or asyncio) as the inbox called `name`."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    addr = endpoint(run_dir, name)
    path = addr.removeprefix("ipc://")
    if os.path.exists(path):
        os.unlink(path)  # a crashed previous incarnation leaves its socket file
    sock.bind(addr)


def outbox(
    ctx: zmq.Context[zmq.Socket[bytes]], run_dir: str | Path, name: str, *, immediate: bool = False
) -> zmq.Socket[bytes]:
    """A PUSH socket connected to another process's inbox.

    `immediate` makes sends fail (EAGAIN) while the peer is not connected instead of
    queueing for it: used where the sender keeps its own record of what it handed out.
    """
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(endpoint(run_dir, name))
    return sock


def send(sock: zmq.Socket[bytes], msg: Message, *, block: bool = True) -> bool:
    """Send one message; with block=False, False means it could not go now."""
    try:
        sock.send(encode(msg), 0 if block else zmq.NOBLOCK)
    except zmq.Again:
        return False
    _sent.inc()
    return True


def recv(sock: zmq.Socket[bytes]) -> Message:
    msg = decode(sock.recv(copy=True))
    _received.inc()
    return msg


def try_recv(sock: zmq.Socket[bytes]) -> Message | None:
    """The next message if one is waiting, else None (never blocks)."""
    try:
        raw = sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None
    _received.inc()
    return decode(raw)
