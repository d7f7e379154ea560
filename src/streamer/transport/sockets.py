"""ZeroMQ PUSH/PULL over ipc:// in the private run directory.

Every socket gets a short linger: ZeroMQ's default (wait forever for unsent messages)
turns a stopped peer into a hung shutdown. Endpoints are named by what they receive, and
the stable side binds: each process binds its own inboxes, producers connect to them.

Nothing here raises on the hot path: readiness is read from `ZMQ_EVENTS` before every
receive and send (an exception per empty poll was most of a stage's cost per frame).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import prometheus_client
import zmq

LINGER_MS = 200

MESSAGES = prometheus_client.Counter("streamer_messages", "ZeroMQ messages (packets) this process sent or received",
                                     ["direction"])
_sent, _received = MESSAGES.labels("out"), MESSAGES.labels("in")

Socket = zmq.Socket[bytes]


def endpoint(run_dir: str | Path, name: str) -> str:
    """The ipc address of an inbox; ipc paths are limited to ~107 bytes, so keep names short."""
    path = os.path.join(str(run_dir), f"{name}.sock")
    if len(path) > 100:
        raise ValueError(f"ipc path too long for a unix socket: {path}")
    return f"ipc://{path}"


def bind_inbox(sock: zmq.Socket[Any], run_dir: str | Path, name: str) -> None:
    """Bind `sock` as the inbox called `name`."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    addr = endpoint(run_dir, name)
    path = addr.removeprefix("ipc://")
    if os.path.exists(path):
        os.unlink(path)  # a crashed previous incarnation leaves its socket file
    sock.bind(addr)


def outbox(ctx: zmq.Context[Socket], run_dir: str | Path, name: str, *, immediate: bool = False) -> Socket:
    """A PUSH socket connected to another process's inbox.

    `immediate` makes a send impossible while the peer is not connected instead of queueing
    for it: used where the sender keeps its own record of what it handed out (the model actors).
    """
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    if immediate:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(endpoint(run_dir, name))
    return sock


def events(sock: zmq.Socket[Any]) -> int:
    """ZMQ_EVENTS: what the socket could do now (POLLIN, POLLOUT), without blocking."""
    return cast(int, sock.get(zmq.EVENTS))


def fd(sock: zmq.Socket[Any]) -> int:
    """The file descriptor an event loop watches: it turns readable when `events` may have changed."""
    return cast(int, sock.get(zmq.FD))


def drain(sock: Socket, limit: int) -> list[bytes]:
    """Up to `limit` waiting messages, without blocking and without `zmq.Again`."""
    out: list[bytes] = []
    while len(out) < limit and events(sock) & zmq.POLLIN:
        out.append(sock.recv(copy=True))
    _received.inc(len(out))
    return out


def try_send(sock: Socket, data: bytes) -> bool:
    """Send if the socket can take it now (a peer is connected and its queue has room)."""
    if not events(sock) & zmq.POLLOUT:
        return False
    try:
        sock.send(data, zmq.NOBLOCK)
    except zmq.Again:  # the peer went between the check and the send: rare, not the hot path
        return False
    _sent.inc()
    return True


class ZmqLink:
    """`transport.link.Link` over ZeroMQ: bound PULL inboxes, lazily connected PUSH outboxes."""

    def __init__(self, run_dir: str, inboxes: Sequence[str], immediate: Callable[[str], bool],
                 peers: Sequence[str] = ()) -> None:
        self.ctx: zmq.Context[Socket] = zmq.Context()
        self.run_dir = run_dir
        self._inboxes: dict[str, Socket] = {}
        for name in inboxes:
            sock = self.ctx.socket(zmq.PULL)
            bind_inbox(sock, run_dir, name)
            self._inboxes[name] = sock
        self._outboxes: dict[str, Socket] = {}
        self._immediate = immediate
        self._pollers: dict[tuple[str, ...], zmq.Poller] = {}
        for dest in peers:  # connected now, so the first send does not find the connection still opening
            self._outbox(dest)

    def wait(self, inboxes: Sequence[str], timeout_s: float) -> bool:
        key = tuple(inboxes)
        if not key:  # everything held back: just let time pass
            time.sleep(timeout_s)
            return False
        if any(events(self._inboxes[i]) & zmq.POLLIN for i in key):
            return True
        poller = self._pollers.get(key)
        if poller is None:
            poller = self._pollers[key] = zmq.Poller()
            for i in key:
                poller.register(self._inboxes[i], zmq.POLLIN)
        return bool(poller.poll(max(0, int(timeout_s * 1000))))

    def take(self, inbox: str, limit: int) -> list[bytes]:
        return drain(self._inboxes[inbox], limit)

    def fds(self) -> list[int]:
        """The file descriptors an event loop watches for this link's inboxes (edge-triggered:
        after a read, ask `readable` before waiting for one to fire again)."""
        return [fd(sock) for sock in self._inboxes.values()]

    def readable(self, inboxes: Sequence[str]) -> bool:
        """Whether any of `inboxes` has a packet waiting now, without blocking."""
        return any(events(self._inboxes[i]) & zmq.POLLIN for i in inboxes if i in self._inboxes)

    def send(self, dest: str, data: bytes) -> bool:
        return try_send(self._outboxes.get(dest) or self._outbox(dest), data)

    def _outbox(self, dest: str) -> Socket:
        sock = self._outboxes[dest] = outbox(self.ctx, self.run_dir, dest, immediate=self._immediate(dest))
        return sock

    def close(self) -> None:
        self.ctx.destroy(linger=LINGER_MS)
