"""Uploads at full speed, at every limit: does anything shared die, is every sample counted?

Each scenario starts a server on its defaults (a front and a model actor per core, the fake
model's constant_factor 0.05) and runs its clients at once on the simple route, each sending
noise as fast as it can, then `stop`:

* `mono`: twenty clients, 60 s of 16 kHz s16 mono each in 100 ms frames (what streamer-client
  sends without --real-time), half with aiohttp's client and half with the `websockets` library;
* `8ch-8k`: twenty clients of 8 channels at 8 kHz s16, in 1 MiB frames;
* `192k-8ch`: twenty clients of the largest format the limits allow, 192 kHz x 8 channels of
  float, in 1 MiB frames;
* `mixed`: all three kinds at once.

A client refused at the handshake (503: the server is at capacity) comes back a second later,
as streamer-client does. Printed per scenario: sessions that ended 1000 with every sample of
every channel counted, handshakes refused, restarts of any process, wall time, the server's
CPU (psutil over its process tree) per second of audio answered, the clients' own CPU (four
processes, on the same two cores), and the fronts' peak memory above where they started.

    python bench/uploads.py [--scenarios mono 8ch-8k 192k-8ch mixed] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from server import Server  # noqa: E402
from uploads import Outcome, Upload, in_processes  # noqa: E402

MIB = 1 << 20
CLIENT_PROCESSES = 4  # the clients' own CPU, spread (reported beside the server's)
RESULTS = Path(__file__).resolve().parent / "results" / "uploads.md"


def scenarios(scale: float) -> dict[str, list[Upload]]:
    mono = [Upload(seconds=60.0 * scale, library=("aiohttp", "websockets")[i % 2]) for i in range(20)]
    eight = [Upload(channels=8, rate=8000, seconds=20.0 * scale, frame_bytes=MIB,
                    library=("aiohttp", "websockets")[i % 2]) for i in range(20)]
    wide = [Upload(channels=8, rate=192000, is_float=True, seconds=5.0 * scale, frame_bytes=MIB,
                   library=("aiohttp", "websockets")[i % 2]) for i in range(20)]
    return {"mono": mono, "8ch-8k": eight, "192k-8ch": wide, "mixed": mono[:8] + eight[:6] + wide[:6]}


class Watch:
    """The server's CPU seconds (every process of its tree) and its fronts' peak RSS."""

    def __init__(self, srv: Server) -> None:
        assert srv.proc is not None
        self.root = psutil.Process(srv.proc.pid)
        self.fronts = [psutil.Process(a["pid"]) for a in srv.actors() if a["role"] == "front"]
        self.base = {p.pid: p.memory_info().rss for p in self.fronts}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu0 = self.cpu()

    def cpu(self) -> float:
        total = 0.0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for p in self.fronts:
                try:
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return max(self.peak[pid] - self.base[pid] for pid in self.base) / MIB


def run(name: str, uploads: list[Upload]) -> str:
    with tempfile.TemporaryDirectory() as d:
        srv = Server(Path(d) / "run", env={"STREAMER_ACTORS_MODELS": "0", "STREAMER_ACTORS_FRONTS": "0",
                                           "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.05",
                                           "STREAMER_SERVER_LOG_LEVEL": "WARNING"}).start()
        try:
            with Watch(srv) as w:
                began = time.monotonic()
                clients0 = _children_cpu()
                outcomes: list[Outcome] = in_processes(srv.ws("simple"), uploads, CLIENT_PROCESSES, timeout=1800)
                clients = _children_cpu() - clients0
                wall = time.monotonic() - began
                cpu = w.cpu() - w.cpu0
            restarts = {a["name"]: a["restarts"] for a in srv.actors() if a["restarts"]}
        finally:
            srv.stop()
    whole = sum(o.whole for o in outcomes)
    audio = sum(o.upload.seconds * o.upload.channels for o in outcomes)
    sent = sum(o.upload.seconds * o.upload.rate * o.upload.channels * (4 if o.upload.is_float else 2)
               for o in outcomes) / MIB
    bad = [f"{o.upload.name}: {o.close_code} {o.errors[:1]} {o.failure}" for o in outcomes if not o.whole]
    for line in bad[:5]:
        print("   ", line, flush=True)
    kinds = ", ".join(f"{n} x {k}" for k, n in _count(outcomes).items())
    refused = sum(o.refused for o in outcomes)
    return (f"| {name} | {kinds} | {sent:.0f} MiB | {whole}/{len(outcomes)} | {refused} | {restarts or 'none'} "
            f"| {wall:.1f} s "
            f"| {audio:.0f} s | {100 * cpu / audio:.2f} % | {clients:.0f} s | {w.growth_mib:.0f} MiB |")


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children: the client processes, once their pool is shut."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _count(outcomes: list[Outcome]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in outcomes:
        out[o.upload.name] = out.get(o.upload.name, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["mono", "8ch-8k", "192k-8ch", "mixed"])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every client's seconds of audio")
    args = ap.parse_args()
    plans = scenarios(args.scale)
    rows = ["| scenario | clients | sent | whole (1000, every sample) | 503s (came back) | restarts | wall "
            "| audio (per channel) "
            "| server CPU per audio second | clients' CPU | a front's peak growth |",
            "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name in args.scenarios:
        print(f"{name} ...", flush=True)
        rows.append(run(name, plans[name]))
        print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    print(table)
    RESULTS.write_text(f"# Uploads at full speed (`python bench/uploads.py --scale {args.scale:g}`)\n\n{table}")


if __name__ == "__main__":
    main()
