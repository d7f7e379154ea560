"""The one Procfile process: owns the run directory, the pools and every child.

honcho stops everything when any Procfile line exits, so the actors are children of this
process, not Procfile lines. It wakes on a child's death at once (each child's pidfd in
one `wait`, no polling), restarts it by the `RestartPolicy`, and past the restart
intensity shuts down in order and exits non-zero so honcho or systemd notices.

Start order is models, segmenter, decoder, fronts (consumers first, the doors last, as
`runtime.topology` declares); stop order is the reverse, one role at a time, and the fronts
get `drain_s` to finish the sessions in flight while everything behind them still runs.
The pools are unlinked and the run directory removed on the way out.

A child that stops beating (alive but silent for its role's `hang_timeout_s`) is killed
and then handled like any other death. On every death the supervisor, before restarting
anything, tells the actors (`Exited`) and takes back the slots the dead process had been
handed in the pool it consumes: nobody else will ever release them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import prometheus_client
import zmq

from streamer.front.processes import SAMPLES_FILE
from streamer.front.seats import SEATS_FILE
from streamer.runtime import group, metrics
from streamer.runtime.config import Config
from streamer.runtime.topology import ROLES, Host, Topology
from streamer.supervisor.children import Child
from streamer.supervisor.policy import Escalate, RestartPolicy
from streamer.transport import sockets
from streamer.transport.messages import Exited, Packet, encode
from streamer.transport.shm import BufferPool, ensure_room

log = logging.getLogger("supervisor")

NOTICE_RETRY_S = 0.01
NOTICE_TIMEOUT_S = 10.0
STATS = ("processed", "inflight", "rtf", "held")  # the heartbeat keys the actors table shows
PUBLISH_EVERY_S = 1.0  # heartbeats' stats reach the actors table at most this often


class SupervisorMetrics:
    """Made by the supervisor, not at import: `spawn` re-imports the parent's main module
    (and so this one) in every child, which would give every process these series too.
    `actor_role`, not `role`: the front's group page labels each sample with its process."""

    def __init__(self) -> None:
        self.restarts = prometheus_client.Counter("streamer_restarts", "Child processes restarted, by role",
                                                  ["actor_role"])
        self.live = prometheus_client.Gauge("streamer_live_processes", "Child processes running (ready), by role",
                                            ["actor_role"])
        for role in ROLES:
            self.restarts.labels(role)


def make_run_dir(configured: str, run_id: str) -> str:
    """A private directory for ipc sockets (0700: other users cannot connect to them).

    A configured directory that exists is used only if it is already private and ours, and no
    live server runs in it: its mode is never changed behind the user's back (it may be their
    home), and two servers in one directory would take each other's sockets."""
    if configured:
        try:
            os.mkdir(configured, mode=0o700)
        except FileExistsError:
            st = os.stat(configured)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise RuntimeError(f"[server] run_dir {configured} exists and is not a private directory of this "
                                   f"user (mode {stat.S_IMODE(st.st_mode):o}): give a new path, a 0700 directory, "
                                   "or leave run_dir empty") from None
            running = group.read(configured)
            if running is not None and _alive(running.pid):
                raise RuntimeError(f"[server] run_dir {configured} belongs to a running server (pid {running.pid})"
                                   ) from None
        return configured
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"streamer-{run_id}-", dir=base)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def ports_taken(cfg: Config) -> list[int]:
    """The public ports someone already listens on. The fronts share theirs with SO_REUSEPORT,
    and so would any other process of this user that asks the same: a second server started on
    a port in use would not fail, it would silently take half the connections (and a gRPC client
    sent to an HTTP server gets a 400). Checked once, at start, without SO_REUSEPORT."""
    taken = []
    for port in (cfg.server.port, cfg.server.grpc_port):
        if not port:
            continue
        with socket.socket(socket.AF_INET6 if ":" in cfg.server.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the fronts: TIME_WAIT is no owner
            try:
                probe.bind((cfg.server.host, port))
            except OSError:
                taken.append(port)
    return taken


class Supervisor:
    def __init__(self, cfg: Config, policy: RestartPolicy | None = None) -> None:
        self.cfg = cfg
        self.policies = {r: policy or RestartPolicy.from_config(cfg.supervisor.role(r)) for r in ROLES}
        self.run_id = secrets.token_hex(4)
        self.run_dir = make_run_dir(cfg.server.run_dir, self.run_id)
        self._published_at = -PUBLISH_EVERY_S
        self.topology = Topology(cfg)
        self.children = [Child.of(h) for h in self.topology.hosts]
        self.pools: dict[str, BufferPool] = {}
        self._zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._tell = {name: sockets.outbox(self._zctx, self.run_dir, name, immediate=True)
                      for name in self.topology.listeners()}
        self._undelivered: list[tuple[sockets.Socket, bytes, float]] = []  # (to, notice, give up at)
        self._stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.exit_code = 0
        self.metrics_port: int | None = None
        self.metrics = SupervisorMetrics()

    # -- lifecycle -----------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until told to stop, clean up; the process exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.metrics_port = metrics.serve(self.cfg)
            self._create_pools()
            for child in self.children:
                self._start(child)
            self._publish()
            self._watch()
        except Escalate as e:
            log.error("giving up: %s", e)
            self.exit_code = 1
        finally:
            self._shutdown()
            for s, h in old.items():
                signal.signal(s, h)
        return self.exit_code

    def request_stop(self) -> None:
        self._stop_requested = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        self.request_stop()

    def _create_pools(self) -> None:
        specs = self.topology.pools
        self.topology.check_pools()
        ensure_room(list(specs.values()))
        for name, spec in specs.items():
            self.pools[name] = BufferPool.create(spec, self.run_id)

    def _start(self, child: Child) -> None:
        try:
            child.start(self.run_id, self.run_dir, self.cfg.to_dict())
        except (OSError, EOFError) as e:  # e.g. a fork server that died between its check and our call
            delay = self._restart_later(child)  # counts as a crash
            log.error("could not start %s (%s): trying again in %.2f s", child.name, e, delay)
            return
        log.info("started %s (pid %s)", child.name, child.pid)

    # -- the watch loop ------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop_requested:
            waitables: dict[Any, tuple[str, Child | None]] = {self._wake_r: ("wake", None)}
            for c in self.children:
                if c.exited is not None:
                    waitables[c.exited] = ("exit", c)
                    if c.control is not None:
                        waitables[c.control] = ("control", c)
            ready = wait(list(waitables), self._next_timer_in())
            # Read what a child said before reaping it: its last words may be in the pipe.
            for kind in ("wake", "control", "exit"):
                for obj in ready:
                    what, child = waitables[obj]
                    if what != kind:
                        continue
                    if what == "wake":
                        os.read(self._wake_r, 64)
                    elif what == "control" and child is not None and child.control is obj:
                        self._on_control(child)
                    elif what == "exit" and child is not None and child.exited == obj:
                        self._on_exit(child)
            self._deliver()
            self._kill_hung()
            self._restart_due()

    def _on_control(self, child: Child) -> None:
        if child.control is None:
            return
        try:
            msg = child.control.recv()
        except (EOFError, OSError):
            child.control = None  # the process is going; its pidfd will say so
            return
        if not (isinstance(msg, tuple) and msg):
            return
        child.last_beat = time.monotonic()
        if msg[0] == "beat" and len(msg) == 3 and isinstance(msg[2], dict):
            # A process of several actors reports each one's stats under its place's name.
            said = msg[2] if child.places else {child.name: msg[2]}
            child.stats = {p.name: {k: v for k, v in stats.items() if k in STATS}
                           for p in child.hosted if isinstance(stats := said.get(p.name), dict)}
            if time.monotonic() - self._published_at >= PUBLISH_EVERY_S:
                self._publish()  # (every child beats once a second: a write for several, not one each)
        elif msg[0] == "metrics" and len(msg) == 3:
            child.metrics_port = int(msg[2])
            self._publish()
        elif msg[0] == "ready":
            child.state = "running"
            log.info("%s ready (pid %s)", child.name, child.pid)
            self._publish()

    def _on_exit(self, child: Child) -> None:
        pid = child.pid or 0
        how = child.reap()
        if self._stop_requested:
            child.state = "stopped"
            return
        self._take_back(child, pid, how)
        delay = self._restart_later(child)
        log.warning("%s (pid %s) died: %s; restarting in %.2f s", child.name, pid, how, delay)
        self._publish()

    def _restart_later(self, child: Child) -> float:
        """Count a crash of `child` and schedule its restart by its role's policy (which raises
        `Escalate` past the intensity); the delay."""
        now = time.monotonic()
        delay = self.policies[child.role].next_delay(child.crash_times, now)
        child.state, child.restart_at = "restarting", now + delay
        return delay

    def _take_back(self, child: Child, pid: int, how: str) -> None:
        """Reclaim what the dead process held and tell those who kept state about it.

        Safe without locks: the slots below the producer's current allocation id that are
        still taken were handed to the dead consumer (or queued for it and lost), and its
        replacement is not started yet, so nobody else will touch them.
        """
        for name in self.topology.reclaimed_at_death(Host(child.hosted)):
            pool = self.pools[name]
            freed = pool.reclaim(below_alloc=pool.next_alloc)
            if freed:
                log.info("reclaimed %d %s-pool slots held by dead %s", freed, pool.spec.name, child.name)
        # Every actor of the process died with it, and each listener hears of each: as if they had
        # died at once (a front replays its streams once for them all: same pid). Not the
        # inboxes the dead process bound: its replacement binds them, and a note of its own
        # predecessor's death, read late, would end streams it has opened since.
        give_up = time.monotonic() + NOTICE_TIMEOUT_S
        own = set(self.topology.bound(Host(child.hosted)))
        for p in child.hosted:
            note = encode(Packet(None, [Exited(p.role, p.index, pid, how)]))
            self._undelivered += [(sock, note, give_up) for name, sock in self._tell.items() if name not in own]
        self._deliver()

    def _deliver(self) -> None:
        """Hand out the death notices that could not go yet. A listener's inbox may be full for a
        moment (it is busy), and a notice it never gets leaves a stream waiting on a dead
        process; a listener that is itself down gets its notices once its replacement binds,
        or not at all after NOTICE_TIMEOUT_S (a fresh process holds no state about the dead)."""
        now = time.monotonic()
        waiting: list[tuple[sockets.Socket, bytes, float]] = []
        blocked: set[int] = set()  # a listener's notices go in order
        for sock, note, until in self._undelivered:
            if id(sock) in blocked or not sockets.try_send(sock, note):
                if now < until:
                    waiting.append((sock, note, until))
                    blocked.add(id(sock))
        self._undelivered = waiting

    def _hang_deadline(self, c: Child) -> float | None:
        """When a silent child counts as hung: `start_timeout_s` after its start until it says
        ready (importing a role's code takes seconds on a busy machine), then its role's
        `hang_timeout_s` after its last word (systemd's TimeoutStartSec and WatchdogSec)."""
        if c.process is None or c.killed_as_hung is not None:
            return None
        if c.state == "starting":
            return c.started_at + self.cfg.supervisor.start_timeout_s
        return c.last_beat + self.policies[c.role].hang_timeout_s

    def _next_timer_in(self) -> float | None:
        if self._undelivered:
            return NOTICE_RETRY_S
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        due += [d for c in self.children if (d := self._hang_deadline(c)) is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _kill_hung(self) -> None:
        """SIGKILL a child whose main loop has gone silent; its pidfd then fires as for any death."""
        now = time.monotonic()
        for c in self.children:
            deadline = self._hang_deadline(c)
            if deadline is not None and now >= deadline and c.process is not None and not self._stop_requested:
                c.killed_as_hung = now - c.last_beat
                what = "was not ready" if c.state == "starting" else "sent no heartbeat"
                log.error("%s (pid %s) %s for %.1f s: killing it", c.name, c.pid, what, c.killed_as_hung)
                c.signal(signal.SIGKILL)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.restart_at is not None and c.restart_at <= now and not self._stop_requested:
                c.restarts += 1
                for p in c.hosted:
                    self.metrics.restarts.labels(p.role).inc()
                self._start(c)
                self._publish()

    # -- state for the front and for people ------------------------------------------

    def snapshot(self) -> group.Group:
        now = time.monotonic()
        for role in ROLES:
            self.metrics.live.labels(role).set(sum(1 for c in self.children for p in c.hosted
                                                   if p.role == role and c.state == "running"))
        return group.Group(self.run_id, os.getpid(), self.metrics_port, [m for c in self.children
                                                                         for m in c.snapshot(now)])

    def _publish(self) -> None:
        """Write the children table; the fronts' health, actors and metrics routes read it. A
        change of state is written at once; the stats of heartbeats at most once a second."""
        self._published_at = time.monotonic()
        group.publish(self.run_dir, self.snapshot())

    # -- shutdown --------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop_requested = True
        sup = self.cfg.supervisor
        # One role at a time, in reverse start order, every process of a role at once: the fronts
        # drain their sessions together while everything behind them still runs.
        for role in dict.fromkeys(c.role for c in reversed(self.children)):
            mine = [c for c in self.children if c.role == role]
            for child in mine:
                child.restart_at = None
                child.terminate()
            for child in mine:
                if child.process is not None:
                    child.stop(sup.stop_timeout_s + (sup.drain_s if role == "front" else 0.0))
                    log.info("stopped %s: %s", child.name, child.last_exit)
        self._zctx.destroy(linger=0)
        for pool in self.pools.values():
            pool.close()
            pool.unlink()
        self.pools.clear()
        if not self.cfg.server.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:  # a directory we were given: take back only what we put there
            for leftover in [*Path(self.run_dir).glob("*.sock"), Path(self.run_dir, group.STATE_FILE),
                             Path(self.run_dir, SEATS_FILE), Path(self.run_dir, SAMPLES_FILE)]:
                leftover.unlink(missing_ok=True)
        os.close(self._wake_r)
        os.close(self._wake_w)
