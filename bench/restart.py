"""What a crash costs: restart latency per role, and the extra time to final for a region
whose model actor was killed while working on it.

* restart latency: SIGKILL to the replacement's `ready` (its sockets bound and the pools
  attached), read from the supervisor's published actor table, polled every 2 ms. Back-off
  is set to zero so this measures the restart itself, not the crash-loop policy.
* extra time to final: one spoken sentence streamed at once; each model call sleeps 1 s
  (`mode = "sleep"`, so the machine's speed does not matter). Baseline: `inactive` to final
  with nothing killed. Then the actor holding the region is SIGKILLed 0.5 s into its work;
  the difference minus those 0.5 s of lost work is what recovery itself costs.

    python bench/restart.py [--kills N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from server import free_port  # noqa: E402  (below the ephemeral range, like the tests' servers)


class Server:
    def __init__(self, workdir: str, **env: str) -> None:
        self.port = free_port()
        self.run_dir = Path(workdir, f"run-{self.port}")
        self.run_dir.mkdir(mode=0o700)
        full = dict(os.environ, STREAMER_SERVER_PORT=str(self.port), STREAMER_SERVER_GRPC_PORT="0",
                    STREAMER_SERVER_RUN_DIR=str(self.run_dir),
                    STREAMER_ACTORS_MODELS="2", STREAMER_SERVER_LOG_LEVEL="WARNING", STREAMER_METRICS_BASE_PORT="0",
                    **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "streamer.supervisor.cli", "serve"], cwd=ROOT, env=full,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.wait_until(lambda: all(a["state"] == "running" for a in self.actors()) and len(self.actors()) >= 5, 60)
        time.sleep(1.5)  # the models' first `Ready` reaches the segmenter

    def actors(self) -> list[dict[str, Any]]:
        try:
            rows: list[dict[str, Any]] = json.loads((self.run_dir / "actors.json").read_text())["actors"]
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return rows

    def row(self, name: str) -> dict[str, Any]:
        return next(a for a in self.actors() if a["name"] == name)

    @staticmethod
    def wait_until(cond: Any, timeout: float, step: float = 0.002) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(step)
        raise TimeoutError

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def restart_latency(srv: Server, name: str) -> float:
    old = srv.row(name)["pid"]
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    srv.wait_until(lambda: (r := srv.row(name))["pid"] not in (None, old) and r["state"] == "running", 30)
    return time.monotonic() - t0


def sentence() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        raw, out = Path(d, "a.wav"), Path(d, "b.raw")
        subprocess.run(["espeak-ng", "-w", str(raw), "The quick brown fox jumps over the lazy dog."], check=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-b", "16", "-e", "signed-integer", "-t", "raw", str(out),
                        "pad", "0.3", "1.0"], check=True)
        return out.read_bytes()


async def time_to_final(srv: Server, pcm: bytes, kill_after_s: float | None) -> float:
    """Seconds from `inactive` to the region's final; optionally kill model-0 mid-work."""
    url = f"ws://127.0.0.1:{srv.port}/api/v1/segmented"
    start = {"request": "start", "format": {"channels": 1, "sample_rate": 16000, "bit_depth": 16, "is_float": False}}
    inactive_at = final_at = 0.0
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json(start)
        for i in range(0, len(pcm), 3200):
            await ws.send_bytes(pcm[i : i + 3200])
        await ws.send_json({"request": "stop"})
        async for msg in ws:
            m = json.loads(msg.data)
            if m["type"] == "inactive":
                inactive_at = time.monotonic()
                if kill_after_s is not None:
                    pid = srv.row("model-0")["pid"]  # an idle pair hands the first item to index 0
                    asyncio.get_running_loop().call_later(kill_after_s, os.kill, pid, signal.SIGKILL)
            elif m["type"] == "segment" and m.get("is_final"):
                final_at = time.monotonic()
            elif m["type"] == "error":
                raise RuntimeError(m)
    return final_at - inactive_at


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="kills per role for restart latency")
    parser.add_argument("--runs", type=int, default=8, help="streams per case for time to final")
    args = parser.parse_args(argv)
    no_backoff = {f"STREAMER_SUPERVISOR_{r.upper()}_{k}": v for r in ("model", "decoder", "segmenter")
                  for k, v in (("BACKOFF_STEP_S", "0"), ("INTENSITY", "10000"))}
    print(f"restart cost ({os.cpu_count()} cores, Python {sys.version.split()[0]})\n")
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as workdir:
        srv = Server(workdir, STREAMER_ACTORS_PLACEMENT="split", **no_backoff)  # each stage its own process to kill
        try:
            print("| role | kills | restart p50 | restart p99 | max |")
            print("|---|---:|---:|---:|---:|")
            for name in ("model-0", "decoder", "segmenter"):
                lat = []
                for _ in range(args.kills):
                    lat.append(restart_latency(srv, name))
                    time.sleep(0.05)
                role = name.split("-")[0]
                print(f"| {role} | {len(lat)} | {pct(lat, 50) * 1e3:.0f} ms | {pct(lat, 99) * 1e3:.0f} ms "
                      f"| {max(lat) * 1e3:.0f} ms |")
        finally:
            srv.stop()

        srv = Server(workdir, STREAMER_MODEL_FAKE_MODE="sleep", STREAMER_MODEL_FAKE_DELAY="1.0",
                     STREAMER_MODEL_FAKE_CONSTANT_FACTOR="0", **no_backoff)
        try:
            pcm = sentence()
            base = [asyncio.run(time_to_final(srv, pcm, None)) for _ in range(args.runs)]
            killed = []
            for _ in range(args.runs):
                killed.append(asyncio.run(time_to_final(srv, pcm, 0.5)))
                time.sleep(1.0)  # model-0 is back and has announced itself
        finally:
            srv.stop()
    extra = [k - statistics.median(base) for k in killed]
    print()
    print("| region's model actor | runs | inactive -> final p50 | p99 | extra p50 | extra less 0.5 s lost work |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| left alone | {len(base)} | {pct(base, 50) * 1e3:.0f} ms | {pct(base, 99) * 1e3:.0f} ms | - | - |")
    print(f"| SIGKILLed 0.5 s into the work | {len(killed)} | {pct(killed, 50) * 1e3:.0f} ms "
          f"| {pct(killed, 99) * 1e3:.0f} ms | {pct(extra, 50) * 1e3:.0f} ms | {(pct(extra, 50) - 0.5) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
