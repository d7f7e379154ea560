"""The supervisor's children: what to start, how, and what is known about each.

Every child is forked by multiprocessing's fork server, a clean process the supervisor
starts once, which has imported every role's code and nothing else (no sockets, threads
or telemetry state to inherit): a child starts in milliseconds instead of importing numpy,
zmq, aiohttp and grpc again (a third of a second to a second of CPU each, at every start and
restart). It runs one role's `main(ctx)`. The supervisor holds one end of a pipe per child;
the child says `ready` on it once its sockets are bound. Every child also holds the read end
of the supervisor's lifeline (`runtime.process`): it exits when the supervisor is gone.

A child's end is read from its pidfd, which says when that process ends whoever its parent is.
The fork server's pipe, which carries its exit code, would also read as every child's end if the
fork server died (`kill -9`) while they live on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from streamer.runtime.group import Member
from streamer.runtime.process import ChildContext
from streamer.runtime.topology import Host, Place

_forks = mp.get_context("forkserver")
# What the fork server imports once, so that no child imports it again.
_forks.set_forkserver_preload(["streamer.supervisor.fork_server",  # first: it makes the fork server ignore SIGTERM
                               "streamer.supervisor.children", "streamer.actors.decoder", "streamer.actors.segmenter",
                               "streamer.actors.model_actor", "streamer.actors.host", "streamer.front.app"])
_lifeline: tuple[Connection, Connection] | None = None  # (children's read end, our write end), for our life


def lifeline() -> Connection:
    """The read end every child gets; the write end stays open here until this process dies."""
    global _lifeline
    if _lifeline is None:
        _lifeline = _forks.Pipe(duplex=False)
    return _lifeline[0]


def _entry(role: str) -> Callable[[ChildContext], None]:
    if role == "front":
        from streamer.front.app import main
    elif role == "decoder":
        from streamer.actors.decoder import main
    elif role == "segmenter":
        from streamer.actors.segmenter import main
    elif role == "model":
        from streamer.actors.model_actor import main
    else:
        raise ValueError(role)
    return main


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _forker(pid: int) -> int | None:
    try:
        return _pidfd(psutil.Process(pid).ppid())
    except psutil.Error:
        return None  # it has ended already


def _ended(fd: int | None, timeout: float = 0.0) -> bool:
    """Whether the process behind a pidfd has ended (a pidfd turns readable then); no pidfd
    means it had ended before one could be opened."""
    if fd is None:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(timeout * 1000))


def _reaped_here(pid: int) -> int | None:
    """The exit code of an orphan of a dead fork server, if it became our child (when this
    process is PID 1, as in a container, or a subreaper); collected, so it leaves no zombie."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if got == pid else None


def child_main(ctx: ChildContext) -> None:
    """Top of every child process (module level, so `spawn` can import it).

    A child leaves the supervisor's process group first: a signal to that group (honcho's stop,
    Ctrl-C) is for the supervisor, which stops its children one role at a time, the fronts'
    drain first while the pipeline behind them still runs. Its lifeline still ends it with the
    supervisor. SIGTERM is back to its default until `enter_child` takes it (the fork server
    ignores it: `fork_server.py`). Outside the terminal's foreground group, a child's log line to
    that terminal would stop it (SIGTTOU, under `stty tostop`) until killed as hung: it ignores
    that signal, which lets the write through."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.setpgid(0, 0)
    if len(ctx.places) > 1 and ctx.role != "front":  # (a shard's process is its front's, with actors in its loop)
        from streamer.actors.host import run_host

        run_host(ctx)
    else:
        _entry(ctx.role)(ctx)


@dataclass
class Child:
    """One supervised process: the actors it runs (`places`; its `role` and `index` are its
    first's, and say which restart policy it follows), and the process currently filling it."""

    role: str
    index: int
    places: tuple[Place, ...] = ()  # () = just (role, index)
    process: BaseProcess | None = None
    control: Connection | None = None
    state: str = "stopped"  # starting | running | restarting | stopped
    pid: int | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_exit: str | None = None
    crash_times: list[float] = field(default_factory=list)
    restart_at: float | None = None
    last_beat: float = 0.0
    metrics_port: int | None = None
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # per place name, from its last heartbeat
    killed_as_hung: float | None = None  # seconds of silence, when the supervisor killed it
    terminated: bool = False  # SIGTERM sent to the current process
    # The process itself, and the fork server that forked it, as pidfds. Its end is read from its
    # own (race-free, whoever its parent is); its exit code comes from the fork server, through a
    # pipe that also reads as "exit 255" if the fork server dies first, while the child lives on.
    pidfd: int | None = None
    forker: int | None = None

    @classmethod
    def of(cls, host: Host) -> Child:
        return cls(host.first.role, host.first.index, host.places if len(host.places) > 1 else ())

    @property
    def hosted(self) -> tuple[Place, ...]:
        return self.places or (Place(self.role, self.index),)

    @property
    def name(self) -> str:
        return Host(self.hosted).name

    def start(self, run_id: str, run_dir: str, config: dict[str, Any]) -> None:
        ours, theirs = _forks.Pipe(duplex=False)
        ctx = ChildContext(self.role, self.index, run_id, run_dir, config, control=theirs, lifeline=lifeline(),
                           beat_every_s=float(config["supervisor"]["heartbeat_s"]), places=self.places)
        proc = _forks.Process(target=child_main, args=(ctx,), name=f"streamer: {self.name}", daemon=False)
        try:
            proc.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.process, self.control = proc, ours
        assert proc.pid is not None
        self.pid = proc.pid
        self.pidfd, self.forker = _pidfd(proc.pid), _forker(proc.pid)
        self.state = "starting"
        self.started_at = self.last_beat = time.monotonic()
        self.metrics_port, self.stats = None, {}
        self.restart_at = None
        self.killed_as_hung = None
        self.terminated = False

    @property
    def exited(self) -> int | None:
        """What turns readable when the current process ends (for `multiprocessing.connection.wait`):
        its pidfd; its sentinel if it had ended before one could be opened."""
        if self.process is None:
            return None
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    def alive(self) -> bool:
        return self.process is not None and not _ended(self.pidfd)

    def signal(self, sig: signal.Signals) -> None:
        if self.alive() and self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
            except ProcessLookupError:
                pass  # ended meanwhile

    def reap(self) -> str:
        """Collect a process that has ended, or SIGKILL it first; returns how it ended ("exit 0",
        "signal SIGKILL", ...)."""
        assert self.process is not None and self.pid is not None
        if not _ended(self.pidfd):
            self.signal(signal.SIGKILL)
            _ended(self.pidfd, 5.0)
        orphaned = self.forker is not None and _ended(self.forker)  # no one is left to say its code
        if orphaned:
            code = _reaped_here(self.pid)
        else:
            self.process.join(5)  # the fork server's word, which follows the end by a moment
            code = self.process.exitcode
        if self.control is not None:
            self.control.close()
        for fd in (self.pidfd, self.forker):
            if fd is not None:
                os.close(fd)
        self.control, self.pidfd, self.forker = None, None, None
        with contextlib.suppress(ValueError):  # its Popen may never have heard of the end
            self.process.close()
        self.process = None
        self.last_exit = describe_exit(code)
        if orphaned:
            self.last_exit += " (its fork server had died)"
        if self.killed_as_hung is not None:
            self.last_exit += f" (hung: no heartbeat for {self.killed_as_hung:.1f} s)"
        return self.last_exit

    def terminate(self) -> None:
        """SIGTERM, once, without waiting (`stop` waits). Once: a process that has finished its
        event loop is back on the default disposition, and a second SIGTERM would kill it."""
        if self.alive() and not self.terminated:
            self.terminated = True
            self.signal(signal.SIGTERM)

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; always reaps."""
        if self.process is None:
            return
        if self.alive():
            self.terminate()
            _ended(self.pidfd, timeout)
        self.reap()
        self.state = "stopped"

    def snapshot(self, now: float) -> list[Member]:
        """One row per actor: actors that share a process share its pid, state and restarts, and
        name it (`process`)."""
        alive = self.process is not None
        process = self.name if self.places else None
        return [Member(p.role, p.index, p.name, self.pid if alive else None, self.state, self.restarts,
                       round(now - self.started_at, 3) if alive else 0.0, self.last_exit,
                       self.metrics_port if alive else None, **self.stats.get(p.name, {}), process=process)
                for p in self.hosted]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"

