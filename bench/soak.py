"""Soak: half capacity for half an hour, a model actor SIGKILLed every 10 s; does anything grow?

    python bench/soak.py --minutes 30 --sessions 12 --kill-every 10
    python bench/soak.py --kill-shard-every 60       # shards' processes die too
    python bench/soak.py --placement split           # every actor its own process

Starts ours on its defaults (two model actors, the fake model at 0.05 CPU-s per audio second),
keeps `--sessions` clients streaming speech with pauses in real time (each one stream after
another, 60 s of audio each), and SIGKILLs a random model actor every `--kill-every` s.
Every 30 s it reads, per process: RSS, open file descriptors, and the shared-memory segments
of the run. After a warm-up (a sixth of the run, at least 2 minutes) the last sample is
compared with the first: the table shows both and the growth. Sessions must see no error
and end 1000. A model actor restarts after each kill, so its row is that of its latest
incarnation. Writes `bench/results/soak.md` (`soak-split.md` with `--placement split`).

`--kill-shard-every` also SIGKILLs a front's process (under shards, a shard: a front with its
decoder and segmenter) every so many seconds, the fronts in turn. Its sessions end 1006 (cut,
counted apart: this load generator starts a new stream rather than resuming); every other
session must still see no error and end 1000, and nothing may grow or be left in /dev/shm.

Every `--watch-every` s (default 0.25) it also reads each front's own metrics: what
admission decides by (the last load report, the sessions open over every front) and its
refusals by rule. Each refusal is printed with the front's readings just before and after
it, so a 503 is explained by data; `--readings` writes them all (CSV), `--log` keeps the
server's log (at INFO: a refusal is logged with the exact report it went by).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))

import aiohttp  # noqa: E402
import load  # noqa: E402
import loadgen  # noqa: E402

from streamer.runtime import group  # noqa: E402
from streamer.transport.shm import run_prefix  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE_EVERY_S = 30.0
ADMISSION = {  # the front's metric: its column
    "streamer_front_admission_sessions": "sessions",
    "streamer_front_load_streams": "streams",
    "streamer_front_load_per_stream": "per_stream",
    "streamer_front_load_busy": "busy",
    "streamer_front_load_queue_delay_seconds": "queue_delay_s",
    "streamer_front_load_queued_audio_seconds": "queued_audio_s",
    "streamer_front_sessions_active": "own",
}
RULES = ("behind", "busy", "demand")


@dataclass
class Sample:
    at: float
    rss: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    shm: int = 0


def name_of(p: psutil.Process) -> str:
    try:
        title = p.cmdline()[0]
    except (psutil.Error, IndexError):
        return "?"
    return title.removeprefix("streamer: ") if title.startswith("streamer: ") else "tracker"


def sample(system: load.System, began: float) -> Sample:
    s = Sample(time.monotonic() - began)
    for p in system.tree():
        try:
            name = name_of(p)
            s.rss[name] = p.memory_info().rss
            s.fds[name] = p.num_fds()
        except psutil.Error:
            continue
    state = group.read(str(system.run_dir))
    run_id = state.run_id if state is not None else "?"
    s.shm = sum(1 for n in os.listdir("/dev/shm") if n.startswith(run_prefix(run_id)))
    return s


async def streamer(url: str, until: float, stats: dict[str, int], errors: list[str], cuts_expected: bool) -> None:
    pcm = loadgen.track()
    rng = random.Random()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        while time.monotonic() < until:
            frames = len(pcm) // loadgen.FRAME_BYTES
            try:
                s = await loadgen.one_session(http, url, pcm, rng.randrange(frames) * loadgen.FRAME_BYTES,
                                              time.monotonic(), min(60.0, max(1.0, until - time.monotonic())), False)
            except (aiohttp.ClientError, ConnectionError) as e:  # its front died under it mid-send
                stats["cut"] += 1
                if not cuts_expected:
                    errors.append(f"connection lost: {e!r}")
                continue
            if s.refused:  # the server is busy: a client comes back after Retry-After, not at once
                stats["refused"] += 1
                errors.append(s.errors[-1])
                await asyncio.sleep(1.0)
                continue
            stats["streams"] += 1
            stats["finals"] += len(s.finals)
            if s.close_code == 1006 and cuts_expected:
                stats["cut"] += 1
                continue
            errors += s.errors
            if s.close_code != 1000:
                errors.append(f"closed {s.close_code}")


@dataclass
class Reading:
    """One front's admission metrics at one moment."""

    at: float
    index: int
    values: dict[str, float]

    def line(self) -> str:
        v = self.values
        return (f"{self.at:7.2f} s front-{self.index}: "
                f"sessions {v.get('sessions', 0):.0f} (own {v.get('own', 0):.0f}), "
                f"report: streams {v.get('streams', 0):.0f}, per_stream {v.get('per_stream', 0):.4f}, "
                f"busy {v.get('busy', 0):.3f}, queue_delay {v.get('queue_delay_s', 0):.3f} s, "
                f"queued {v.get('queued_audio_s', 0):.1f} s; refused " +
                ", ".join(f"{r} {v.get('refused_' + r, 0):.0f}" for r in RULES))


def read_front(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        page = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(page):
        for smp in fam.samples:
            if smp.name in ADMISSION:
                out[ADMISSION[smp.name]] = smp.value
            elif smp.name == "streamer_front_admission_refusals_total":
                out["refused_" + smp.labels["rule"]] = smp.value
    return out


def watch_admission(system: load.System, began: float, every_s: float, stop: threading.Event,
                    readings: list[Reading]) -> None:
    """Every front's admission metrics, read from each front's own port (quicker than the group page)."""
    run_dir = str(system.run_dir)
    while not stop.wait(every_s):
        state = group.read(run_dir)
        for a in state.actors if state is not None else []:
            if a.role == "front" and a.metrics_port:
                try:
                    values = read_front(a.metrics_port)
                except OSError:
                    continue
                readings.append(Reading(time.monotonic() - began, a.index, values))


def refusals(readings: list[Reading]) -> list[str]:
    """Each front's readings just before and just after its refusal counters moved."""
    out: list[str] = []
    last: dict[int, Reading] = {}
    for r in readings:
        before = last.get(r.index)
        last[r.index] = r
        if before is None:
            continue
        moved = {rule: r.values.get("refused_" + rule, 0) - before.values.get("refused_" + rule, 0) for rule in RULES}
        if any(moved.values()):
            out += ["refused " + ", ".join(f"{n:.0f} by {rule}" for rule, n in moved.items() if n),
                    "  before " + before.line(), "  after  " + r.line()]
    return out


def killer(system: load.System, every_s: float, stop: threading.Event, kills: list[int], role: str = "model-",
           in_turn: bool = False) -> None:
    """Every `every_s` a process whose name starts with `role`: one at random, or each in turn."""
    rng = random.Random()
    turn = 0
    while not stop.wait(every_s):
        victims = sorted((p for p in system.tree() if name_of(p).startswith(role)), key=name_of)
        if victims:
            victim = victims[turn % len(victims)] if in_turn else rng.choice(victims)
            turn += 1
            try:
                os.kill(victim.pid, signal.SIGKILL)
                kills.append(victim.pid)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--kill-every", type=float, default=10.0)
    parser.add_argument("--placement", choices=["split", "shards"], default="shards")
    parser.add_argument("--kill-shard-every", type=float, default=0.0, help="seconds between SIGKILLs of a front's "
                        "process (a shard's, under shards); 0: never")
    parser.add_argument("--watch-every", type=float, default=0.25, help="seconds between reads of the admission "
                        "metrics")
    parser.add_argument("--log", type=Path, help="keep the server's log (at INFO) here")
    parser.add_argument("--readings", type=Path, help="write every admission reading here (CSV)")
    args = parser.parse_args()
    seconds = args.minutes * 60
    warm = max(120.0, seconds / 6)
    stats = {"streams": 0, "finals": 0, "refused": 0, "cut": 0}
    errors: list[str] = []
    kills: list[int] = []
    shard_kills: list[int] = []
    shards = args.placement == "shards"
    samples: list[Sample] = []
    readings: list[Reading] = []
    with tempfile.TemporaryDirectory() as work:
        system = load.System("ours-shards" if shards else "ours-split",
                             {"STREAMER_SUPERVISOR_MODEL_INTENSITY": "1000",
                              "STREAMER_SUPERVISOR_FRONT_INTENSITY": "1000"}, Path(work))
        system.start({"STREAMER_SERVER_LOG_LEVEL": "INFO"} if args.log else {})
        try:
            began = time.monotonic()
            stop = threading.Event()

            def watch() -> None:
                while not stop.wait(SAMPLE_EVERY_S):
                    samples.append(sample(system, began))
                    last = samples[-1]
                    print(f"{last.at:6.0f} s: rss {sum(last.rss.values()) / 2**20:.1f} MiB, "
                          f"fds {sum(last.fds.values())}, shm {last.shm}, streams {stats['streams']}, "
                          f"refused {stats['refused']}, cut {stats['cut']}, errors {len(errors)}, "
                          f"kills {len(kills)} + {len(shard_kills)}", flush=True)

            threads = [threading.Thread(target=watch, daemon=True),
                       threading.Thread(target=killer, args=(system, args.kill_every, stop, kills), daemon=True),
                       threading.Thread(target=watch_admission, args=(system, began, args.watch_every, stop, readings),
                                        daemon=True)]
            if args.kill_shard_every:
                threads.append(threading.Thread(target=killer, args=(system, args.kill_shard_every, stop, shard_kills,
                                                                     "front-", True), daemon=True))
            for t in threads:
                t.start()

            async def everyone() -> None:
                until = began + seconds
                await asyncio.gather(*(streamer(system.url(), until, stats, errors, bool(args.kill_shard_every))
                                       for _ in range(args.sessions)))

            asyncio.run(everyone())
            stop.set()
            samples.append(sample(system, began))
        finally:
            system.stop()
            if args.log:
                shutil.copy(system.log.name, args.log)
    first = next(s for s in samples if s.at >= warm)
    last = samples[-1]
    rows = ["| process | RSS after warm-up | RSS at end | growth | fds after warm-up | fds at end |",
            "|---|---:|---:|---:|---:|---:|"]
    worst = 0.0
    for name in sorted(last.rss):
        a, b = first.rss.get(name), last.rss[name]
        growth = None if a is None else 100 * (b - a) / a
        if growth is not None and not name.startswith(("model-", "front-") if args.kill_shard_every else "model-"):
            worst = max(worst, growth)
        rows.append(f"| {name} | {'-' if a is None else f'{a / 2**20:.1f} MiB'} | {b / 2**20:.1f} MiB "
                    f"| {'-' if growth is None else f'{growth:+.1f} %'} | {first.fds.get(name, '-')} "
                    f"| {last.fds[name]} |")
    killed_shards = (f", a {'shard' if shards else 'front'} SIGKILLed every {args.kill_shard_every:g} s "
                     f"({len(shard_kills)} kills, {stats['cut']} sessions cut)" if args.kill_shard_every else "")
    text = (f"soak ({args.placement}): {args.minutes:g} min, {args.sessions} real-time sessions, a model actor "
            f"SIGKILLed every {args.kill_every:g} s ({len(kills)} kills){killed_shards}; {stats['streams']} streams, "
            f"{stats['finals']} finals, {stats['refused']} refused, {len(errors)} errors (refusals included); "
            f"warm-up {warm:.0f} s; "
            f"shm segments {first.shm} -> {last.shm}; largest RSS "
            f"growth of a process that was never killed: {worst:+.1f} %\n\n" + "\n".join(rows) + "\n")
    print(text)
    if errors:
        print("errors:", errors[:10])
    print("\n".join(refusals(readings)) or "no refusal seen in the admission metrics")
    if args.readings:
        columns = [*ADMISSION.values(), *(f"refused_{r}" for r in RULES)]
        rows = [",".join(["at", "front", *columns])]
        rows += [",".join([f"{r.at:.2f}", str(r.index), *(f"{r.values.get(c, 0):g}" for c in columns)])
                 for r in readings]
        args.readings.write_text("\n".join(rows) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("soak.md" if shards else "soak-split.md")).write_text(text)
    return 0 if not errors and worst < 5 and first.shm == last.shm else 1


if __name__ == "__main__":
    sys.exit(main())
