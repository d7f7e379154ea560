"""Sweeps of real-time load over ours and the peers, in one run: CPU per stream and latency.

For every system and stream count the server is started fresh, `bench/loadgen.py` streams
speech with pauses in real time in 20 ms frames, and psutil reads the CPU of the server's
whole process tree (the supervisor and every child; the peer and its pool workers) over
the steady window, after the ramp and before the stops. The generator runs in this
process and its own CPU is reported beside, not counted.

    python bench/load.py overhead            # null model: what the pipeline itself costs
    python bench/load.py capacity            # busy-CPU model, streams kept in real time
    python bench/load.py capacity-interim    # the same, every session asking for interims
    python bench/load.py batching            # a model with a per-call cost, batched or not
    python bench/load.py batching-launch     # the same, the per-call cost dominating
    python bench/load.py admission           # twice the capacity offered
    python bench/load.py overhead --streams 50,100 --systems ours,process --seconds 30

Each writes `bench/results/<scenario>.md` (the table), `.json` (every figure) and `.png`
(p50 and p99 time to final against streams, per system).

"Keeps real time" is the issue's rule: p99 time to final at most the hangover plus twice the
model time of the longest region plus 100 ms, with every session admitted, every region
answered and no error. Time to final is counted from the region's last voiced frame, where
the hangover starts (the table also shows it from `end_time`, which lies up to 300 ms
earlier when the server trims webrtcvad's quiet tail: no server can answer before the
hangover after the last voiced frame has passed). The capacity sweeps switch ours's admission control off (it would
refuse the very streams a sweep is about); the `admission` scenario shows it at work.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))  # this tree's code, also when it is a checkout beside the installed one

import loadgen  # noqa: E402

from streamer.actors.regions import RegionRules  # noqa: E402
from streamer.runtime import config  # noqa: E402

from server import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CORES = os.cpu_count() or 1


@dataclass
class Scenario:
    systems: list[str]
    streams: list[int]
    env: dict[str, str]  # STREAMER_* for every system (the peers read the same configuration)
    interim: bool = False
    seconds: float = 30.0
    ours_env: dict[str, str] = field(default_factory=dict)  # only for ours (knobs the peers lack)
    ramp_s: float = 2.0  # sessions start evenly over this long
    model_cost: float | None = None  # CPU-s per audio-s of the model, when it is not the fake one
    note: str = ""


NULL_MODEL = {"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0", "STREAMER_MODEL_FAKE_DELAY": "0"}
BUSY_MODEL = {"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.25", "STREAMER_MODEL_FAKE_MODE": "cpu"}
LIGHT_MODEL = {"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.05", "STREAMER_MODEL_FAKE_MODE": "cpu"}
NO_ADMISSION = {"STREAMER_ADMISSION_MAX_BUSY": "1000", "STREAMER_ADMISSION_MAX_QUEUE_DELAY_S": "1000"}
SCENARIOS = {
    "overhead": Scenario(["ours", "ours-1front", "process", "thread"], [50, 100, 150], NULL_MODEL,
                         note="null model: every CPU second is the pipeline's own"),
    "capacity": Scenario(["ours", "process", "thread"], [6, 8, 10, 12, 14, 16], BUSY_MODEL, ours_env=dict(NO_ADMISSION),
                         note="fake model burning 0.25 CPU-s per audio second, one worker per core"),
    "capacity-interim": Scenario(["ours", "process"], [2, 3, 4, 5, 6, 8, 10, 12], BUSY_MODEL, interim=True,
                                 ours_env=dict(NO_ADMISSION),
                                 note="as capacity, every session asking for interim results"),
    "batching": Scenario(["ours", "ours-unbatched"], [20, 40, 60, 80, 100, 120],
                         {"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.02", "STREAMER_MODEL_FAKE_DELAY": "0.02"},
                         interim=True, ours_env=dict(NO_ADMISSION),
                         note="20 ms per model call plus 0.02 CPU-s per audio second"),
    "batching-launch": Scenario(["ours", "ours-unbatched"], [10, 20, 30, 40, 60],
                                {"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.01", "STREAMER_MODEL_FAKE_DELAY": "0.1"},
                                interim=True, ours_env=dict(NO_ADMISSION),
                                note="100 ms per model call plus 0.01 CPU-s per audio second (a launch-bound model)"),
    "capacity-light": Scenario(["ours", "process"], [20, 30, 40, 50, 60], LIGHT_MODEL, ours_env=dict(NO_ADMISSION),
                               note="fake model burning 0.05 CPU-s per audio second, one worker per core"),
    "capacity-asr": Scenario(["ours"], [2, 3, 4, 5, 6, 8], {"STREAMER_MODEL_NAME": "pocketsphinx"},
                             ours_env=dict(NO_ADMISSION), model_cost=0.35,
                             note="pocketsphinx (segmented route: one decode per region)"),
    "admission": Scenario(["ours"], [24], BUSY_MODEL, seconds=40, ramp_s=20.0,
                          note="twice the busy model's capacity offered over 20 s; a refused client goes away"),
}


# Ours, as configured for a sweep: the defaults (placement "shards" since issue 18; results before
# that commit under "ours" are split's), or one knob turned.
VARIANTS = {
    "ours": {},
    "ours-1front": {"STREAMER_ACTORS_FRONTS": "1"},
    "ours-unbatched": {"STREAMER_MODEL_MAX_BATCH": "1"},
    "ours-split": {"STREAMER_ACTORS_PLACEMENT": "split"},  # every actor its own process
    "ours-paired": {"STREAMER_ACTORS_PLACEMENT": "paired"},  # the decoder and segmenter in one process
    "ours-split-shards": {"STREAMER_ACTORS_PLACEMENT": "split", "STREAMER_ACTORS_SHARDS": "0"},  # a decoder and a
    # segmenter per core, each alone
    "ours-paired-shards": {"STREAMER_ACTORS_SHARDS": "0", "STREAMER_ACTORS_PLACEMENT": "paired"},
    "ours-shards": {"STREAMER_ACTORS_PLACEMENT": "shards"},  # per core a front with its decoder and segmenter
    # ... reading each client's socket at most every so often (`[front] read_hold_ms`)
    "ours-shards-hold20": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_FRONT_READ_HOLD_MS": "20"},
    "ours-shards-hold40": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_FRONT_READ_HOLD_MS": "40"},
    "ours-shards-hold80": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_FRONT_READ_HOLD_MS": "80"},
    # ... or gathering each stream's frames for longer before the decoder's turn (`[front] coalesce_ms`)
    "ours-shards-coalesce40": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_FRONT_COALESCE_MS": "40"},
    # ... and how the kernel runs the model actors (src/streamer/runtime/scheduling.py)
    "ours-shards-nice": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_SCHEDULING_MODEL_NICE": "10"},
    "ours-shards-batch": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_SCHEDULING_MODEL_BATCH": "true"},
    "ours-shards-pin": {"STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_SCHEDULING_PIN": "true"},
}


class System:
    """A server under test: started fresh, its process tree measured, always stopped."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**os.environ, **env, "STREAMER_SERVER_LOG_LEVEL": "WARNING"}
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_dir: Path | None = None  # ours: where its group is published (`streamer.runtime.group`)

    def start(self, extra: dict[str, str]) -> None:
        env = {**self.env, **extra}
        if self.name.startswith("ours"):
            # Unique, though two points of a sweep may draw the same free port.
            self.run_dir = run_dir = Path(tempfile.mkdtemp(prefix=f"run-{self.port}-", dir=self.workdir))
            env.update(STREAMER_SERVER_PORT=str(self.port), STREAMER_SERVER_RUN_DIR=str(run_dir),
                       STREAMER_ACTORS_MODELS=str(CORES), STREAMER_METRICS_BASE_PORT="0",
                       STREAMER_LIMITS_MAX_SESSIONS="1000", STREAMER_SERVER_GRPC_PORT="0")
            env.update(VARIANTS[self.name])
            cmd = [sys.executable, "-m", "streamer.supervisor.cli", "serve"]
        else:
            pool, _, loop = self.name.partition("+")  # `floor`: the peer reading frames and dropping them
            cmd = [sys.executable, str(ROOT / "bench" / "peers" / "monolith.py"),
                   *(["--pool", "thread", "--read-only"] if pool == "floor" else ["--pool", pool]),
                   "--workers", str(CORES), "--port", str(self.port)] + (["--uvloop"] if loop == "uvloop" else [])
        self.log = open(self.workdir / f"{self.name}-{self.port}.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        time.sleep(1.0)  # every actor announced; pools warmed
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy")

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/segmented"

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        self.log.close()


def role_of(p: psutil.Process) -> str:
    try:
        title = p.cmdline()[0]
    except (psutil.Error, IndexError):
        return "?"
    if title.startswith("streamer: "):
        name = title.removeprefix("streamer: ")
        # One figure per role, whatever the index: `decoder-1+segmenter-1` counts as `decoder+segmenter`.
        return "+".join(part.split("-")[0] for part in name.split("+"))
    if "resource_tracker" in " ".join(p.cmdline()):
        return "tracker"
    return "peer" if "monolith" in " ".join(p.cmdline()) else "worker"


class CpuWindow:
    """CPU seconds of every process of a tree between `begin` and `end` (a background thread)."""

    def __init__(self, system: System, begin: float, end: float) -> None:
        self.by_role: dict[str, float] = {}
        self.generator = 0.0
        self.wall = end - begin
        self._thread = threading.Thread(target=self._run, args=(system, begin, end), daemon=True)
        self._thread.start()

    def _run(self, system: System, begin: float, end: float) -> None:
        me = psutil.Process()
        time.sleep(max(0.0, begin - time.monotonic()))
        before = [(p, role_of(p), sum(p.cpu_times()[:2])) for p in system.tree()]
        g0 = sum(me.cpu_times()[:2])
        time.sleep(max(0.0, end - time.monotonic()))
        self.generator = sum(me.cpu_times()[:2]) - g0
        for p, role, c0 in before:
            try:
                c1 = sum(p.cpu_times()[:2])
            except psutil.Error:
                continue
            self.by_role[role] = self.by_role.get(role, 0.0) + c1 - c0
        self.by_role.pop("tracker", None)

    def join(self) -> None:
        self._thread.join()


def keeps_real_time(s: loadgen.Summary, cfg: config.Config, model_cost: float) -> tuple[bool, float]:
    """The issue's bound, from the longest region actually answered."""
    model_time = cfg.model.fake.delay + model_cost * s.longest_region_s
    bound = cfg.segmenter.hangover_ms / 1000 + 2 * model_time + 0.1
    ok = s.voiced_p99 is not None and s.voiced_p99 <= bound and s.errors == 0 and s.incomplete == 0 and s.refused == 0
    return ok, bound


def run_point(name: str, sc: Scenario, n: int, workdir: Path) -> dict[str, Any]:
    cfg = config.load(env={**os.environ, **sc.env})
    seg = cfg.segmenter
    rules = RegionRules(seg.vad_aggressiveness, seg.min_speech_ms, seg.hangover_ms, seg.pad_ms, seg.max_segment_s,
                        seg.interim_interval_s)
    system = System(name, sc.env, workdir)
    system.start(sc.ours_env if name.startswith("ours") else {})
    try:
        ramp = sc.ramp_s
        began = time.monotonic()
        window = CpuWindow(system, began + ramp + 3.0, began + ramp + sc.seconds - 1.0)
        runs = asyncio.run(loadgen.run(system.url(), n, sc.seconds, sc.interim, ramp_s=ramp, rules=rules))
        window.join()
    finally:
        system.stop()
    s = loadgen.Summary.of(runs)
    cost = sc.model_cost if sc.model_cost is not None else cfg.model.fake.constant_factor
    ok, bound = keeps_real_time(s, cfg, cost)
    # The latency target: from a region's last voiced frame, the hangover plus the model's time
    # for a typical (median) region plus 30 ms.
    model_p50 = cfg.model.fake.delay + cost * s.median_region_s
    voiced_bound = cfg.segmenter.hangover_ms / 1000 + model_p50 + 0.03
    server = sum(window.by_role.values())
    streaming = max(1, s.sessions)
    return {"system": name, "streams": n, "interim": sc.interim, **s.as_dict(),
            "cpu_per_stream_pct": 100 * server / window.wall / streaming,
            "cpu_by_role_pct": {r: round(100 * c / window.wall / streaming, 4) for r, c in window.by_role.items()},
            "server_cpu_pct": 100 * server / window.wall, "generator_cpu_pct": 100 * window.generator / window.wall,
            "bound_s": bound, "keeps_real_time": ok, "voiced_bound_s": voiced_bound}


def fmt(x: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}{unit}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| system | streams | CPU % per stream | by process (% per stream) | server CPU % | generator CPU % "
            "| finals | p50 from end_time | p99 from end_time | p50 | p99 | bound | keeps real time "
            "| latency target (p50) | interims/session | refused | errors |")
    lines = [head, "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        roles = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["cpu_by_role_pct"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {r['system']} | {r['streams']} | {r['cpu_per_stream_pct']:.3f} | {roles} "
                     f"| {r['server_cpu_pct']:.1f} | {r['generator_cpu_pct']:.1f} | {r['finals']} "
                     f"| {fmt(r['p50'], ' s')} | {fmt(r['p99'], ' s')} | {fmt(r['voiced_p50'], ' s', 3)} "
                     f"| {fmt(r['voiced_p99'], ' s', 3)} | {r['bound_s']:.2f} s "
                     f"| {'yes' if r['keeps_real_time'] else 'no'} | {r['voiced_bound_s']:.3f} s "
                     f"| {r['interims_per_session']:.1f} | {r['refused']} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == name and r["voiced_p50"] is not None]
        xs = [r["streams"] for r in mine]
        line = lat.plot(xs, [r["voiced_p50"] for r in mine], "o-", label=f"{name} p50")[0]
        lat.plot(xs, [r["voiced_p99"] for r in mine], "s--", color=line.get_color(), label=f"{name} p99")
        cpu.plot([r["streams"] for r in rows if r["system"] == name],
                 [r["cpu_per_stream_pct"] for r in rows if r["system"] == name], "o-", label=name)
    bounds = sorted({(r["streams"], r["bound_s"]) for r in rows})
    if bounds:
        lat.axhline(max(b for _, b in bounds), color="grey", lw=0.8, ls=":", label="real-time bound")
    lat.set(xlabel="concurrent real-time streams", ylabel="last voiced frame to final (s)", title=title)
    lat.set_yscale("log")
    lat.legend(fontsize=7)
    cpu.set(xlabel="concurrent real-time streams", ylabel="server CPU % of a core per stream",
            title="CPU per stream (server side, psutil)")
    cpu.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--streams", help="comma-separated stream counts (default: the scenario's)")
    parser.add_argument("--systems", help=f"comma-separated: {', '.join(VARIANTS)}, process, thread, "
                                          "process+uvloop, floor+uvloop (reads frames, drops them)")
    parser.add_argument("--seconds", type=float, help="audio each session streams")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra STREAMER_* setting for ours only (repeatable)")
    parser.add_argument("--tag", default="", help="suffix for the result files")
    args = parser.parse_args(argv)
    sc = SCENARIOS[args.scenario]
    if args.streams:
        sc.streams = [int(x) for x in args.streams.split(",")]
    if args.systems:
        sc.systems = args.systems.split(",")
    if args.seconds:
        sc.seconds = args.seconds
    sc.ours_env.update(kv.split("=", 1) for kv in args.set)
    RESULTS.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    stem = RESULTS / f"{args.scenario}{args.tag}"
    with tempfile.TemporaryDirectory() as work:
        for n in sc.streams:
            for name in sc.systems:
                row = run_point(name, sc, n, Path(work))
                rows.append(row)
                print(f"{name:16s} {n:4d} streams: {row['cpu_per_stream_pct']:.3f} % CPU per stream "
                      f"({', '.join(f'{k} {v:.3f}' for k, v in row['cpu_by_role_pct'].items())}), "
                      f"p50 {fmt(row['voiced_p50'], ' s')}, p90 {fmt(row['voiced_p90'], ' s')}, "
                      f"p99 {fmt(row['voiced_p99'], ' s')}, mean {fmt(row['voiced_mean'], ' s')} "
                      f"(bound {row['bound_s']:.2f} s), "
                      f"finals {row['finals']}, errors {row['errors']}, refused {row['refused']}, "
                      f"generator {row['generator_cpu_pct']:.1f} %", flush=True)
                stem.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    text = f"{sc.note}; {CORES} cores; {sc.seconds:g} s of audio per session\n\n" + table(rows)
    stem.with_suffix(".md").write_text(text)
    plot(rows, args.scenario, stem.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
