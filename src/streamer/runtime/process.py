"""The start of every child process: identity, signals, logging, the control pipe to the supervisor.

Children are forked by multiprocessing's fork server (`supervisor/children.py`), which has
none of the supervisor's state (sockets, threads, telemetry exporters): nothing of it leaks
in, and each child builds its own here, after it starts.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import setproctitle

from streamer.runtime import config as config_mod
from streamer.runtime import metrics, scheduling, telemetry
from streamer.runtime.config import Config
from streamer.runtime.logs import setup_logging
from streamer.runtime.topology import Place
from streamer.transport import shm


@dataclass
class ChildContext:
    """What the supervisor hands a child: who it is, where the run lives, its configuration.

    `role` and `index` are its actor's; a process that runs several actors (`Topology.hosts`)
    lists them in `places`, and `role` and `index` are then its first's."""

    role: str
    index: int
    run_id: str
    run_dir: str
    config: dict[str, Any]
    control: Connection | None = None
    lifeline: Connection | None = None  # read end of a pipe only the supervisor writes: EOF = it is gone
    stopping: threading.Event = field(default_factory=threading.Event)
    beat_every_s: float = 1.0
    stats: Callable[[], dict[str, Any]] | None = None
    places: tuple[Place, ...] = ()
    _last_beat: float = 0.0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["stopping"]  # a lock does not cross a spawn; the child makes its own
        state["stats"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stopping = threading.Event()

    @property
    def place(self) -> Place:
        return Place(self.role, self.index)

    @property
    def name(self) -> str:
        return "+".join(p.name for p in self.places) if self.places else self.place.name

    @property
    def hosted(self) -> tuple[Place, ...]:
        """The actors this process runs."""
        return self.places or (self.place,)

    def cfg(self) -> Config:
        return config_mod.from_dict(self.config)

    def ready(self) -> None:
        """Tell the supervisor this process is serving (its sockets are bound)."""
        self._tell(("ready", os.getpid()))

    def beat(self) -> None:
        """Tell the supervisor this process's main loop still turns (silence means hung), with
        the stage's running totals for `/api/v1/actors`."""
        now = time.monotonic()
        if now - self._last_beat >= self.beat_every_s:
            self._last_beat = now
            self._tell(("beat", os.getpid(), self.stats() if self.stats is not None else {}))

    def announce_metrics(self, port: int) -> None:
        self._tell(("metrics", os.getpid(), port))

    def _tell(self, msg: object) -> None:
        """Never blocks: the pipe is non-blocking in the child (`enter_child`), and a message of a
        few hundred bytes is written whole or not at all (under PIPE_BUF). A supervisor busy
        stopping the group may not read for a while; a beat it misses is worth less than a
        main loop stuck on it."""
        if self.control is None:
            return
        try:
            self.control.send(msg)
        except BlockingIOError:
            pass  # the supervisor is not reading just now: this word is lost, the next one will do
        except (BrokenPipeError, OSError):
            pass  # the supervisor is gone; the death signal will follow


def _die_with_supervisor(ctx: ChildContext) -> None:
    """Exit at once when the supervisor dies, so a SIGKILLed supervisor leaves no orphan.

    At once, not after a drain: without its supervisor the group is gone (its pipeline stops at
    the same moment), and a front draining for `drain_s` would only keep its clients from
    reconnecting to another instance; they see 1006 at once instead.

    How: the supervisor holds the only write end of a pipe whose read end every child has (the
    lifeline); nothing is ever written, so the read returns only when the supervisor is gone, for
    whatever reason. A parent-death signal would not do: children are forked by the fork server,
    whose own death would then take every actor down with it. A read that has already ended
    (the supervisor died while this process started) ends it before it serves anything."""
    lifeline = ctx.lifeline
    if lifeline is None:
        return

    def watch() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        try:
            shm.unlink_run(ctx.run_id)  # its resource tracker may have died with it
        finally:
            os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def enter_child(ctx: ChildContext) -> None:
    """Call first thing in a child: name, logging, and signals that end its loop cleanly."""
    setproctitle.setproctitle(f"streamer: {ctx.name}")
    _die_with_supervisor(ctx)
    if ctx.control is not None:
        os.set_blocking(ctx.control.fileno(), False)
    setup_logging(ctx.name, str(ctx.config["server"]["log_level"]))
    cfg = ctx.cfg()
    scheduling.apply(cfg, ctx.hosted)
    role = "+".join(p.role for p in ctx.hosted)
    telemetry.setup(role, ctx.index if ctx.role in ("model", "front") else None)
    ctx.announce_metrics(metrics.serve(cfg, ctx.place))

    def on_term(signum: int, frame: object) -> None:
        ctx.stopping.set()

    # Only the supervisor decides the shutdown order: a child is in a process group of its own
    # (`supervisor.children`), and would ignore a Ctrl-C meant for the supervisor's group anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
