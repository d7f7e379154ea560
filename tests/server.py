"""Running the real server in tests: `streamer serve` as a subprocess, reaped every time."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from streamer.runtime import config
from streamer.runtime.topology import Place, Topology
from streamer.transport.shm import run_prefix

# Below Linux's ephemeral range (32768-60999): every process of a server binds its own metrics
# port with port 0, and a port handed out here must not be grabbed that way before it is used.
_PORTS = (20000, 32000)
CLIENT = [sys.executable, "-m", "streamer.client.streamer_client"]  # `streamer-client`, from this venv
ROOT = Path(__file__).resolve().parent.parent


# Pins a server to `[actors] placement = "split"`, every actor a process of its own: for tests of
# what only that placement has, a decoder or a segmenter process that dies alone and whose
# streams are replayed without their clients noticing. (Under "shards" the same kill takes the
# front and its sessions with it: test_shards.py and test_chaos.py test that.)
SPLIT = {"STREAMER_ACTORS_PLACEMENT": "split"}


def _ports() -> tuple[int, int]:
    """This process's share of `_PORTS`: each xdist worker draws from a slice of its own. A
    supervisor checks its ports seconds before its fronts bind them (with SO_REUSEPORT), so two
    servers started side by side could both find one port free and then share it."""
    lo, hi = _PORTS
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or workers <= 1:
        return lo, hi
    k = int(worker[2:]) % workers
    width = (hi - lo) // workers
    return lo + k * width, lo + (k + 1) * width


def free_port(*not_these: int) -> int:
    while True:
        port = random.randrange(*_ports())
        if port in not_these:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class PortTaken(Exception):
    """The server refused a port another process listens on."""


@dataclass
class Server:
    """A supervisor started with `streamer serve`, its own run dir, and a free port."""

    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    grpc_port: int = 0  # drawn apart from `port` (one port for both is refused)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    honcho: bool = False  # started as a user does, `honcho start` on the repository's Procfile

    def __post_init__(self) -> None:
        if not self.grpc_port:
            self.grpc_port = free_port(self.port)

    def command(self) -> list[str]:
        if self.honcho:
            return [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "start"]
        return [sys.executable, "-m", "streamer.supervisor.cli", "serve"]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def ws(self, route: str = "segmented") -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/{route}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "STREAMER_SERVER_PORT": str(self.port),
            "STREAMER_SERVER_GRPC_PORT": str(self.grpc_port),
            "STREAMER_SERVER_RUN_DIR": str(self.run_dir),
            "STREAMER_ACTORS_MODELS": "2",
            "STREAMER_ACTORS_FRONTS": "2",
            "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.01",
            "STREAMER_METRICS_BASE_PORT": "0",
        })
        env.update(self.env)
        if self.honcho:  # its Procfile line runs `streamer` through /bin/sh: this venv's, as `make run` does
            env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        return env

    def start(self, timeout: float = 60.0, ready: Callable[[], object] | None = None,
              every: float = 0.1) -> Server:
        """Start and wait until healthy (or until `ready()`, polled every `every` s: a test that
        kills the group part-way through its start). Ports are drawn at random and tests run six
        at once: if another test's server took one first, the supervisor refuses to share it, and
        this one draws new ports and starts again."""
        for _ in range(5):
            try:
                return self._start(timeout, ready or (lambda: self.health()[0] == 200 and self.all_running()), every)
            except PortTaken:
                self.port = free_port()
                self.grpc_port = free_port(self.port)
        raise RuntimeError("no free ports in five draws")

    def _start(self, timeout: float, ready: Callable[[], object], every: float) -> Server:
        self.log_path = self.run_dir.parent / f"server-{self.port}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    if "is in use: another server listens there" in self.log():
                        raise PortTaken()
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                if ready():
                    return self
                time.sleep(every)  # polling: the condition is the wait
            raise TimeoutError(f"server not ready within {timeout} s:\n{self.log()}")
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def health(self) -> tuple[int, dict[str, Any]]:
        """(0, {}) for whatever is not a server of ours answering: nothing listens yet, or another
        process does. Ports are drawn at random, and until the supervisor has refused a taken one
        (`PortTaken`), this may ask another test's gRPC or metrics port."""
        try:
            with urllib.request.urlopen(f"{self.http}/api/v1/health", timeout=2) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                try:
                    return e.code, json.loads(e.read())
                except ValueError:
                    return 0, {}
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ValueError):
            return 0, {}

    def all_running(self) -> bool:
        """Every child is up (health needs one process per role; with several fronts the others
        may still be importing)."""
        try:
            return all(a["state"] == "running" for a in self.actors())
        except (OSError, ValueError, KeyError):
            return False

    def actors(self) -> list[dict[str, Any]]:
        data = json.loads((self.run_dir / "actors.json").read_text())
        actors: list[dict[str, Any]] = data["actors"]
        return actors

    def per_front(self, name: str, **labels: str) -> dict[int, float]:
        """A sample of every front's own registry, by front index: read from each front's loopback
        metrics port (one process's page is quick, the group's `/metrics` gathers them all)."""
        return {int(a["index"]): scrape(a["metrics_port"], name, **labels) for a in self.actors()
                if a["role"] == "front" and a.get("metrics_port")}

    def metric(self, child: str, name: str, **labels: str) -> float:
        """A sample of one child's own registry (`decoder`, `model-1` ...), 0 until its process
        serves one. A stage's totals there move at its heartbeats. Never ask a stopped process."""
        port = actor(self, child).get("metrics_port")
        if not port:
            return 0.0
        try:
            return scrape(port, name, **labels)
        except OSError:
            return 0.0  # it died since (its row goes on naming it until its replacement starts)

    def run_id(self) -> str:
        return str(json.loads((self.run_dir / "actors.json").read_text())["run_id"])

    def descendants(self) -> list[psutil.Process]:
        assert self.proc is not None
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL the whole group if it will not go. Always reaps."""
        if self.proc is None:
            return None
        group = self.descendants()  # children may sit in process groups of their own
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left behind in its session
        except (ProcessLookupError, PermissionError):
            pass
        for p in group:
            with contextlib.suppress(psutil.Error):
                p.kill()
        return self.proc.returncode


def scrape(port: int, name: str, **labels: str) -> float:
    """A sample (summed over those with `labels`) of the registry a process serves on `port`."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        page = r.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(page) for s in fam.samples
               if s.name == name and labels.items() <= s.labels.items())


def shm_segments(run_id: str) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(run_prefix(run_id))]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)  # polling: the condition is the wait
    raise TimeoutError("condition not met")


def alive(procs: list[psutil.Process], grace_s: float = 5.0) -> list[psutil.Process]:
    """Which of `procs` are still running after up to `grace_s` (the resource tracker, for
    one, exits only when it reads EOF from its dead parent)."""
    _, still = psutil.wait_procs(procs, timeout=grace_s)
    out = []
    for p in still:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def actor(srv: Server, name: str) -> dict[str, Any]:
    """The supervisor's published row for one child, by name (`decoder`, `model-1` ...)."""
    return next(a for a in srv.actors() if a["name"] == name)


# The names a server's processes go by depend on its placement, which the suite does not fix (the
# defaults', or STREAMER_ACTORS_PLACEMENT's, or a test's own env): read from the configuration
# that server runs, as its supervisor does, never spelt out for one placement.


def topology(srv: Server) -> Topology:
    """The group exactly as `srv` runs it: its processes, actors and pools."""
    return Topology(config.load(env=srv.environment()))


def process_names(srv: Server) -> list[str]:
    """Every child process by name: its title in `ps` (`streamer: <name>`), its log lines' prefix,
    "supervisor: stopped <name>" (`front-0`, or `front-0+decoder+segmenter` in a shard)."""
    return [h.name for h in topology(srv).hosts]


def span_role(srv: Server, role: str) -> str:
    """The `streamer.role` of the spans `role`'s actor makes: its process's roles joined
    (`front+decoder+segmenter` in a shard, whichever shard)."""
    return "+".join(p.role for p in topology(srv).host_of(Place(role)).places)


def metrics_roles(srv: Server) -> set[str]:
    """The `role` labels of the group's `/metrics` (a page per process): the supervisor's, an
    actor alone's role, or its process's roles joined (`front+decoder+segmenter`, every shard)."""
    return {"supervisor"} | {"+".join(p.role for p in h.places) for h in topology(srv).hosts}


def summed(srv: Server, role: str, key: str) -> float:
    """A heartbeat field summed over every actor of `role`: one decoder or segmenter per shard,
    and the kernel puts a session on whichever front (and so shard) it likes."""
    return float(sum(a.get(key) or 0 for a in srv.actors() if a["role"] == role))
