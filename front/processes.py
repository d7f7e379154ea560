"""`GET /api/v1/actors`: every process of the group, for a person (and `streamer top`).

The supervisor's published table says who is running (role, slot, pid, state, restarts,
uptime, last exit) and what each stage last reported in its heartbeat (processed,
in-flight, RTF). CPU and memory come from the kernel via psutil, sampled once a second by
a background task, so a request never waits and `cpu_percent` is the share of one core
over the last second (200 means two cores busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import psutil

STATE_FILE = "actors.json"
SAMPLE_EVERY_S = 1.0


def read_table(run_dir: str) -> dict[str, Any]:
    """The supervisor's published table ({} before it has written one)."""
    try:
        table: dict[str, Any] = json.loads(Path(run_dir, STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return table


class CpuSampler:
    """psutil handles kept per pid, so each sample is CPU time since the previous one."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self._procs: dict[int, psutil.Process] = {}
        self.cpu: dict[int, float] = {}
        self.rss: dict[int, int] = {}

    def sample(self) -> None:
        table = read_table(self.run_dir)
        pids = {a["pid"] for a in table.get("actors", []) if a.get("pid")}
        if table.get("pid"):
            pids.add(table["pid"])
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
        while True:
            with contextlib.suppress(Exception):  # a sampling hiccup must never end the task
                self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)

    def table(self) -> dict[str, Any]:
        table = read_table(self.run_dir)
        rows = []
        sup_pid = table.get("pid")
        if sup_pid:
            rows.append({"role": "supervisor", "slot": 0, "name": "supervisor", "pid": sup_pid, "state": "running",
                         "restarts": 0, **self._usage(sup_pid)})
        for a in table.get("actors", []):
            row = {k: a.get(k) for k in ("role", "slot", "name", "pid", "state", "restarts", "uptime_s",
                                         "last_exit", "processed", "inflight", "rtf")}
            row.update(self._usage(a.get("pid")))
            rows.append(row)
        return {"run_id": table.get("run_id"), "front_pid": os.getpid(), "actors": rows}

    def _usage(self, pid: int | None) -> dict[str, Any]:
        if pid is None:
            return {"cpu_percent": None, "rss_bytes": None}
        cpu = self.cpu.get(pid)
        return {"cpu_percent": None if cpu is None else round(cpu, 1), "rss_bytes": self.rss.get(pid)}
