"""The one Procfile process: owns the run directory, the pools and every child.

honcho stops everything when any Procfile line exits, so the actors are children of this
process, not Procfile lines. It wakes on a child's death at once (process sentinels in
one `wait`, no polling), restarts it by the `RestartPolicy`, and past the restart
intensity shuts down in order and exits non-zero so honcho or systemd notices.

Start order is models, segmenter, decoder, front (consumers first, the door last); stop
order is the reverse. The pools are unlinked and the run directory removed on the way out.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from runtime.config import Config
from runtime.layout import pool_specs
from supervisor.children import Child
from supervisor.policy import Escalate, RestartPolicy
from transport.shm import BufferPool, ensure_room

log = logging.getLogger("supervisor")

STATE_FILE = "actors.json"
STOP_TIMEOUT_S = 5.0


def make_run_dir(configured: str, run_id: str) -> str:
    """A private directory for ipc sockets (0700: other users cannot connect to them)."""
    if configured:
        os.makedirs(configured, mode=0o700, exist_ok=True)
        os.chmod(configured, 0o700)
        return configured
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return tempfile.mkdtemp(prefix=f"streamer-{run_id}-", dir=base)


class Supervisor:
    def __init__(self, cfg: Config, policy: RestartPolicy | None = None) -> None:
        self.cfg = cfg
        self.policy = policy or RestartPolicy()
        self.run_id = secrets.token_hex(4)
        self.run_dir = make_run_dir(cfg.server.run_dir, self.run_id)
        self.children = [Child("model", i) for i in range(cfg.model_count)]
        self.children += [Child("segmenter", 0), Child("decoder", 0), Child("front", 0)]
        self.pools: list[BufferPool] = []
        self._stop_requested = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.exit_code = 0

    # -- lifecycle -----------------------------------------------------------------

    def run(self) -> int:
        """Start everything, supervise until told to stop, clean up; the process exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
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
        specs = list(pool_specs(self.cfg).values())
        ensure_room(specs)
        for spec in specs:
            self.pools.append(BufferPool.create(spec, self.run_id))

    def _start(self, child: Child) -> None:
        child.start(self.run_id, self.run_dir, self.cfg.to_dict())
        log.info("started %s (pid %s)", child.name, child.pid)

    # -- the watch loop ------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop_requested:
            waitables: dict[Any, tuple[str, Child | None]] = {self._wake_r: ("wake", None)}
            for c in self.children:
                if c.process is not None:
                    waitables[c.process.sentinel] = ("exit", c)
                    if c.link is not None:
                        waitables[c.link] = ("link", c)
            ready = wait(list(waitables), self._next_restart_in())
            # Read what a child said before reaping it: its last words may be in the pipe.
            for kind in ("wake", "link", "exit"):
                for obj in ready:
                    what, child = waitables[obj]
                    if what != kind:
                        continue
                    if what == "wake":
                        os.read(self._wake_r, 64)
                    elif what == "link" and child is not None and child.link is obj:
                        self._on_link(child)
                    elif what == "exit" and child is not None and child.process is not None \
                            and child.process.sentinel == obj:
                        self._on_exit(child)
            self._restart_due()

    def _on_link(self, child: Child) -> None:
        if child.link is None:
            return
        try:
            msg = child.link.recv()
        except (EOFError, OSError):
            child.link = None  # the process is going; its sentinel will fire
            return
        if isinstance(msg, tuple) and msg and msg[0] == "ready":
            child.state = "running"
            log.info("%s ready (pid %s)", child.name, child.pid)
            self._publish()

    def _on_exit(self, child: Child) -> None:
        how = child.reap()
        if self._stop_requested:
            child.state = "stopped"
            return
        now = time.monotonic()
        delay = self.policy.next_delay(child.crash_times, now)
        child.state = "restarting"
        child.restart_at = now + delay
        log.warning("%s (pid %s) died: %s; restarting in %.2f s", child.name, child.pid, how, delay)
        self._publish()

    def _next_restart_in(self) -> float | None:
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        if not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _restart_due(self) -> None:
        now = time.monotonic()
        for c in self.children:
            if c.restart_at is not None and c.restart_at <= now and not self._stop_requested:
                c.restarts += 1
                self._start(c)
                self._publish()

    # -- state for the front and for people ------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"run_id": self.run_id, "pid": os.getpid(), "actors": [c.snapshot(now) for c in self.children]}

    def _publish(self) -> None:
        """Write the children table atomically; the front's health and actors routes read it."""
        path = Path(self.run_dir, STATE_FILE)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        os.replace(tmp, path)

    # -- shutdown --------------------------------------------------------------------

    def _shutdown(self) -> None:
        self._stop_requested = True
        for child in reversed(self.children):
            if child.process is not None:
                child.stop(STOP_TIMEOUT_S)
                log.info("stopped %s: %s", child.name, child.last_exit)
            child.restart_at = None
        for pool in self.pools:
            pool.close()
            pool.unlink()
        self.pools.clear()
        if not self.cfg.server.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:  # a directory we were given: take back only what we put there
            for leftover in [*Path(self.run_dir).glob("*.sock"), Path(self.run_dir, STATE_FILE)]:
                leftover.unlink(missing_ok=True)
        os.close(self._wake_r)
        os.close(self._wake_w)
