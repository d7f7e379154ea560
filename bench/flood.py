"""Flood the server at ten times real time and watch every process's memory.

N clients stream the same speech file back to back, each at `--speed` times real time, for
`--seconds`; the server runs its defaults (the fake model's constant_factor 0.05) with
STREAMER_LIMITS_MAX_INFLIGHT_AUDIO_S as given. RSS per process comes from
`/api/v1/actors` before, at its peak during, and 5 s after the flood. Bounded means the
"after" column comes back near "before" and the peak does not grow with the flood's length.

    python bench/flood.py [--clients 10] [--speed 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restart import Server  # the same throwaway server as the restart benchmark


def speech_pcm() -> bytes:
    text = ("The quick brown fox jumps over the lazy dog. Streaming speech arrives in small pieces. "
            "Each region is answered while audio still arrives. Results come back in order.")
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d, "a.wav"), Path(d, "b.raw")
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-b", "16", "-e", "signed-integer", "-t", "raw", str(out)],
                       check=True)
        return out.read_bytes()


def rss(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/actors", timeout=5) as r:
        rows: list[dict[str, Any]] = json.loads(r.read())["actors"]
    return {a["name"]: (a.get("rss_bytes") or 0) / 2**20 for a in rows}


async def client(port: int, pcm: bytes, speed: float, until: float, stats: dict[str, int]) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/segmented"
    start = {"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False}}
    chunk = 3200  # 100 ms
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            async with http.ws_connect(url) as ws:
                await ws.send_json(start)
                began = time.monotonic()

                async def read() -> None:
                    async for m in ws:
                        kind = json.loads(m.data)["type"]
                        stats[kind] = stats.get(kind, 0) + 1

                reader = asyncio.create_task(read())
                for i in range(0, len(pcm), chunk):
                    await ws.send_bytes(pcm[i : i + chunk])
                    ahead = (i + chunk) / 32000 / speed - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                await ws.send_json({"request": "stop"})
                await reader
                stats["sessions"] = stats.get("sessions", 0) + 1
                stats["audio_s"] = stats.get("audio_s", 0) + len(pcm) // 32000


async def flood(port: int, pcm: bytes, clients: int, speed: float, seconds: float) -> dict[str, int]:
    stats: dict[str, int] = {}
    until = time.monotonic() + seconds
    await asyncio.gather(*(client(port, pcm, speed, until, stats) for _ in range(clients)))
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--speed", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    pcm = speech_pcm()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as workdir:
        srv = Server(workdir)
        try:
            time.sleep(2.0)  # let the CPU sampler take its baseline
            before = rss(srv.port)
            peak = dict(before)
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    for k, v in rss(srv.port).items():
                        peak[k] = max(peak.get(k, 0.0), v)
                    time.sleep(0.5)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            t0 = time.monotonic()
            stats = asyncio.run(flood(srv.port, pcm, args.clients, args.speed, args.seconds))
            wall = time.monotonic() - t0
            done.set()
            watcher.join()
            time.sleep(5.0)
            after = rss(srv.port)
        finally:
            srv.stop()
    print(f"flood: {args.clients} clients at {args.speed:g}x real time for {wall:.0f} s ({os.cpu_count()} cores): "
          f"{stats.get('sessions', 0)} sessions, {stats.get('audio_s', 0)} s of audio "
          f"({stats.get('audio_s', 0) / wall:.1f} audio s per wall s), {stats.get('segment', 0)} segments, "
          f"{stats.get('error', 0)} errors\n")
    print("| process | RSS before | peak during | 5 s after |")
    print("|---|---:|---:|---:|")
    for name in before:
        print(f"| {name} | {before[name]:.1f} MiB | {peak.get(name, 0):.1f} MiB | {after.get(name, 0):.1f} MiB |")


if __name__ == "__main__":
    main()
