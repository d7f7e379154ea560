"""`GET /api/v1/actors`: every process of the group, for a person (and `streamer top`).

The supervisor's published table says who is running (role, index, pid, state, restarts,
uptime, last exit) and what each stage last reported in its heartbeat (processed,
in-flight, RTF; for a model actor, the sequential streams whose state it holds). CPU and
memory come from the kernel via psutil, read when the table is asked for, so nothing runs
while nobody looks and the first read already has them: `rss_bytes` is the resident
memory now, `cpu_percent` the share of one core (200 means two cores busy) over the last
`cpu_window_s` seconds.

That window needs an earlier reading of each process's CPU time. Several fronts answer on
one port and the kernel picks one per connection, so a reading kept in one front would
give a person's next read, answered by another front, a different figure. The readings
live in a file of the run directory instead (`SAMPLES_FILE`), shared by every front: the
latest and the one before, each at least `WINDOW_S` after the other. A read takes the
newest of them at least `WINDOW_S` old, so while someone watches (`streamer top`, the page:
once a second) the window is one to two seconds, whichever front answers; after a pause it
reaches back to the last look. A process with no such reading (the first look, or a pid
new since) counts from its start: CPU time since the process started over its age, and
`cpu_window_s` is that age.

Times are on the boot clock (`CLOCK_BOOTTIME`), the one `/proc` counts process starts on,
shared by every process: wall time minus psutil's `create_time` is off by up to a second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec
import psutil

from streamer.runtime import group

SAMPLES_FILE = "cpu-samples.json"
WINDOW_S = 1.0


class Sample(msgspec.Struct):
    """Each process's CPU seconds at one moment, by pid, with its start (pids are reused)."""

    at: float  # CLOCK_BOOTTIME
    cpu: dict[int, tuple[float, float]]  # pid -> (psutil create_time, user + system seconds)


class Samples(msgspec.Struct):
    latest: Sample
    before: Sample | None = None


_decoder = msgspec.json.Decoder(Samples)
NONE = {"cpu_percent": None, "cpu_window_s": None, "rss_bytes": None}


class Usage:
    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._path = Path(run_dir, SAMPLES_FILE)

    def table(self) -> dict[str, Any]:
        state = group.read(self.run_dir)
        if state is None:
            return {"run_id": None, "front_pid": os.getpid(), "actors": []}
        usage = self.usage({state.pid} | {a.pid for a in state.actors if a.pid})
        rows: list[dict[str, Any]] = [{"role": "supervisor", "index": 0, "name": "supervisor", "pid": state.pid,
                                       "state": "running", "restarts": 0, **usage.get(state.pid, NONE)}]
        for a in state.actors:
            rows.append({"role": a.role, "index": a.index, "name": a.name, "pid": a.pid, "state": a.state,
                         "restarts": a.restarts, "uptime_s": a.uptime_s, "last_exit": a.last_exit,
                         "processed": a.processed, "inflight": a.inflight, "rtf": a.rtf, "held": a.held,
                         **(usage.get(a.pid, NONE) if a.pid else NONE)})
        return {"run_id": state.run_id, "front_pid": os.getpid(), "actors": rows}

    def usage(self, pids: set[int]) -> dict[int, dict[str, Any]]:
        """CPU and memory of each live process of `pids`, and the shared readings moved on."""
        now = Sample(time.clock_gettime(time.CLOCK_BOOTTIME), {})
        since_boot = now.at + psutil.boot_time()  # the boot clock on create_time's scale
        rss: dict[int, int] = {}
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    t = proc.cpu_times()
                    now.cpu[pid] = (proc.create_time(), t.user + t.system)
                    rss[pid] = proc.memory_info().rss
            except psutil.Error:
                pass  # gone since the supervisor wrote its table
        stored = self._read()
        if stored is None or stored.latest.at > now.at:  # none yet, or from before a reboot
            stored = None
            self._write(Samples(now))
        elif now.at - stored.latest.at >= WINDOW_S:
            self._write(Samples(now, stored.latest))
        readings = (stored.latest, stored.before) if stored is not None else ()
        old = [s for s in readings if s is not None and now.at - s.at >= WINDOW_S]  # the newest first
        out = {}
        for pid, (started, cpu) in now.cpu.items():
            then = next((s for s in old if pid in s.cpu and s.cpu[pid][0] == started), None)
            if then is not None:
                window, spent = now.at - then.at, cpu - then.cpu[pid][1]
            else:  # no reading of this process yet: since it started
                window, spent = since_boot - started, cpu
            window = max(window, 0.01)  # a clock tick: a process this young has spent about none
            out[pid] = {"cpu_percent": round(100 * max(spent, 0.0) / window, 1), "cpu_window_s": round(window, 2),
                        "rss_bytes": rss[pid]}
        return out

    def _read(self) -> Samples | None:
        try:
            return _decoder.decode(self._path.read_bytes())
        except (OSError, msgspec.DecodeError):
            return None

    def _write(self, samples: Samples) -> None:
        """Whole or not at all. Two fronts may write at once: the last one's stands, and
        either keeps the two readings `WINDOW_S` apart."""
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(samples))
            os.replace(tmp, self._path)
        except OSError:
            pass  # the next read counts from each process's start, as the first did
