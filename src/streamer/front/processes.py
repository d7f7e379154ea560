"""`GET /api/v1/actors`: every process of the group, for a person (and `streamer top`).

The supervisor's published table says who is running (role, index, pid, state, restarts,
uptime, last exit) and what each stage last reported in its heartbeat (processed,
in-flight, RTF; for a model actor, the sequential streams whose state it holds). CPU and
memory come from the kernel via psutil, sampled once a second by a background task, so a
request never waits and `cpu_percent` is the share of one core over the last second (200
means two cores busy). It samples only while someone is looking
(a request in the last `WATCHED_S`): every front has a sampler, and psutil calls for every
process each second are not free when nobody reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import psutil

from streamer.runtime import group

SAMPLE_EVERY_S = 1.0
WATCHED_S = 60.0


class CpuSampler:
    """psutil handles kept per pid, so each sample is CPU time since the previous one."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._procs: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}
        self._asked = -WATCHED_S  # monotonic time of the last request for the table

    def sample(self) -> None:
        state = group.read(self.run_dir)
        pids = {a.pid for a in state.actors if a.pid} | {state.pid} if state is not None else set()
        for pid in list(self._procs):
            if pid not in pids:
                del self._procs[pid]
                self.cpu.pop(pid, None)
                self.rss.pop(pid, None)
        for pid in pids:
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                    proc.cpu_percent(None)  # the first call only sets the baseline
                    continue
                with proc.oneshot():
                    self.cpu[pid] = proc.cpu_percent(None)
                    self.rss[pid] = proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - self._asked < WATCHED_S:
                with contextlib.suppress(Exception):  # a sampling hiccup must never end the task
                    self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def table(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        if loop.time() - self._asked >= WATCHED_S:  # nobody was looking: start from a fresh baseline
            with contextlib.suppress(Exception):
                self.sample()
        self._asked = loop.time()
        state = group.read(self.run_dir)
        if state is None:
            return {"run_id": None, "front_pid": os.getpid(), "actors": []}
        rows: list[dict[str, Any]] = [{"role": "supervisor", "index": 0, "name": "supervisor", "pid": state.pid,
                                       "state": "running", "restarts": 0, **self._usage(state.pid)}]
        for a in state.actors:
            rows.append({"role": a.role, "index": a.index, "name": a.name, "pid": a.pid, "state": a.state,
                         "restarts": a.restarts, "uptime_s": a.uptime_s, "last_exit": a.last_exit,
                         "processed": a.processed, "inflight": a.inflight, "rtf": a.rtf, "held": a.held,
                         **self._usage(a.pid)})
        return {"run_id": state.run_id, "front_pid": os.getpid(), "actors": rows}

    def _usage(self, pid: int | None) -> dict[str, Any]:
        if pid is None:
            return {"cpu_percent": None, "rss_bytes": None}
        cpu = self.cpu.get(pid)
        return {"cpu_percent": None if cpu is None else round(cpu, 1), "rss_bytes": self.rss.get(pid)}
