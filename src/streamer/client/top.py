"""`streamer top`: every process of a running server, its CPU and what it is doing, live.

Reads `GET /api/v1/actors` once a second and redraws a table: role and index, pid, state,
CPU (% of one core over the server's `cpu_window_s`: the last second or two while watched,
since the process started on a first look, as with `--once`), resident memory, restarts,
uptime, items in flight and processed, the stage's real-time factor (busy seconds per
audio second) and how the previous process in its place ended. `--once` prints one table
and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

COLUMNS = ("NAME", "PID", "STATE", "CPU%", "RSS MiB", "RESTARTS", "UPTIME", "INFLIGHT", "PROCESSED", "RTF",
           "LAST EXIT")


def fetch(addr: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{addr.rstrip('/')}/api/v1/actors", timeout=3) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def render(data: dict[str, Any]) -> str:
    rows = [COLUMNS]
    cpu: dict[Any, float] = {}  # by pid: the actors of one process share its figure
    for a in data.get("actors", []):
        cpu[a.get("pid") or a.get("name")] = a.get("cpu_percent") or 0.0
        rss = a.get("rss_bytes")
        rows.append((
            a.get("name") or a.get("role", "?"), _fmt(a.get("pid")), a.get("state") or "-",
            _fmt(a.get("cpu_percent"), ".1f"), "-" if rss is None else f"{rss / 2**20:.1f}",
            _fmt(a.get("restarts")), _fmt(a.get("uptime_s"), ".0f"), _fmt(a.get("inflight")),
            _fmt(a.get("processed")), _fmt(a.get("rtf"), ".3f"), a.get("last_exit") or "-",
        ))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"run {data.get('run_id', '?')}: {len(rows) - 1} actors in {len(cpu)} processes, "
                 f"{sum(cpu.values()):.1f}% CPU in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamer top", description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="http://127.0.0.1:8080", help="the server's HTTP address")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    parser.add_argument("--once", action="store_true", help="print one table and exit")
    args = parser.parse_args(argv)
    try:
        while True:
            try:
                table = render(fetch(args.addr))
            except (urllib.error.URLError, OSError, ValueError) as e:
                table = f"cannot read {args.addr}/api/v1/actors: {e}"
                if args.once:
                    print(table, file=sys.stderr)
                    return 1
            if args.once:
                print(table)
                return 0
            sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S  ") + table + "\n")
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
