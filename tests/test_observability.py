"""Seeing inside: one trace per session across every process, Prometheus over the whole
group, and the actors table with CPU that moves when an actor works."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audio import speech, tone
from conversation import Transcript, check_regions_answered, client_transcript, converse, stream_steps
from otlp import Got, Receiver
from server import CLIENT, Server, actor, free_port, metrics_roles, span_role, topology, wait_for


def started(tmp_path: Path, **env: str) -> Server:
    srv = Server(tmp_path / "run", env=env)
    return srv.start()


def only(spans: list[Got], name: str) -> Got:
    (span,) = [s for s in spans if s.name == name]
    return span


def test_one_trace_from_the_client_through_every_process(tmp_path: Path) -> None:
    with Receiver() as otlp:
        srv = started(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint)
        try:
            s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning."))
            wav = tmp_path / "two.wav"
            soundfile.write(wav, s.samples, 16000, subtype="PCM_16")
            out = subprocess.run([*CLIENT, "-i", str(wav), "--addr", srv.ws()],
                                 capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint})
            assert out.returncode == 0, out.stderr
            assert check_regions_answered(client_transcript(out.stdout), 0) == (2, 0)
            trace_id = out.stdout.strip().splitlines()[-1].removeprefix("trace id: ")
            spans = otlp.wait_for(trace_id, {"stream": 1, "session": 1, "decode": 1, "segment": 1, "inference": 2,
                                             "deliver": 2})  # two regions: the models may be two processes
        finally:
            srv.stop()
    client, session = only(spans, "stream"), only(spans, "session")
    decode, segment = only(spans, "decode"), only(spans, "segment")
    assert (client.service, client.parent_id) == ("streamer-client", "")  # the root
    # A span names the roles of its process (in a shard, `front+decoder+segmenter` for all three).
    assert (session.role, session.parent_id) == (span_role(srv, "front"), client.span_id)
    assert (decode.role, decode.parent_id) == (span_role(srv, "decoder"), session.span_id)
    assert (segment.role, segment.parent_id) == (span_role(srv, "segmenter"), decode.span_id)
    inferences = [x for x in spans if x.name == "inference"]
    assert len(inferences) == 2 and all(x.role == "model" and x.parent_id == segment.span_id for x in inferences)
    deliveries = [x for x in spans if x.name == "deliver"]
    assert len(deliveries) == 2 and all(x.role == span_role(srv, "front") and x.parent_id == session.span_id
                                        for x in deliveries)
    assert {x.service for x in spans} == {"streamer", "streamer-client"}


def test_a_retry_after_a_crash_is_part_of_the_sessions_trace(tmp_path: Path) -> None:
    trace_id, client_span = os.urandom(16).hex(), os.urandom(8).hex()
    with Receiver() as otlp:
        # One front, so one segmenter in any placement: the one whose gauge `kill` watches.
        srv = started(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, STREAMER_MODEL_FAKE_MODE="sleep",
                      STREAMER_MODEL_FAKE_DELAY="4.0", STREAMER_ACTORS_MODELS="1", STREAMER_ACTORS_FRONTS="1",
                      STREAMER_SUPERVISOR_HEARTBEAT_S="0.2")
        try:
            s = speech(("The quick brown fox jumps over the lazy dog.",))
            steps = stream_steps(s.samples[None, :], 16000, False)
            steps[0]["trace_id"] = f"00-{trace_id}-{client_span}-01"  # type: ignore[index]

            def kill() -> None:
                # Once the region is handed to the one model actor (which takes 4 s on it: the
                # gauge moves at the segmenter's heartbeats), not at a fixed moment: on a slow
                # machine the region may not be cut yet.
                wait_for(lambda: srv.metric("segmenter", "streamer_dispatch_handed") >= 1, 20)
                os.kill(actor(srv, "model-0")["pid"], signal.SIGKILL)

            threading.Thread(target=kill, daemon=True).start()
            t = asyncio.run(converse(srv.ws(), steps))
            assert check_regions_answered(t, 0) == (1, 0)
            spans = otlp.wait_for(trace_id, {"session", "redo", "inference"})
            log = srv.log()
        finally:
            srv.stop()
    segment = only(spans, "segment")
    redo = only(spans, "redo")
    assert (redo.role, redo.parent_id) == (span_role(srv, "segmenter"), segment.span_id)
    assert redo.attributes["streamer.attempt"] == 1
    finished = [x for x in spans if x.name == "inference"]
    assert [x.attributes["streamer.attempt"] for x in finished] == [2]  # the killed call never ended
    # Every log line about this stream names it and its trace, whichever process wrote it.
    tagged = [line for line in log.splitlines() if f"trace={trace_id}" in line]
    assert any("front" in line and "stream started" in line for line in tagged)
    assert any("segmenter" in line and "redoing work" in line for line in tagged)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.mark.alone  # measures CPU: runs by itself (make test)
def test_actors_table_shows_cpu_rising_with_work_and_restarts_after_kill(tmp_path: Path) -> None:
    # One model, one busy call: 6 s of tone at 0.5 s of CPU per audio second, 3 s of work.
    srv = started(tmp_path, STREAMER_ACTORS_MODELS="1", STREAMER_MODEL_FAKE_CONSTANT_FACTOR="0.5",
                  STREAMER_SEGMENTER_CHUNK_S="6.0")
    try:
        table = get_json(f"{srv.http}/api/v1/actors")
        names = {a["name"] for a in table["actors"]}
        assert names == {"supervisor"} | {p.name for p in topology(srv).places}  # a row per actor
        model = next(a for a in table["actors"] if a["name"] == "model-0")
        steps = stream_steps(tone(6.0)[None, :], 16000, False)
        outcome: list[Transcript] = []
        client = threading.Thread(target=lambda: outcome.append(asyncio.run(converse(srv.ws("simple"), steps))),
                                  daemon=True)
        client.start()
        peak = 0.0

        def sampled_until_the_stream_ends() -> bool:
            nonlocal peak
            rows = {a["name"]: a for a in get_json(f"{srv.http}/api/v1/actors")["actors"]}
            peak = max(peak, rows["model-0"]["cpu_percent"] or 0.0)
            return not client.is_alive()

        wait_for(sampled_until_the_stream_ends, 60)
        (t,) = outcome
        assert t.close_code == 1000, t.messages[-3:]
        assert peak > 50.0, peak  # a busy fake model burns a core
        wait_for(lambda: actor(srv, "model-0").get("processed") == 1, 5)  # the next heartbeat says so
        row = next(a for a in get_json(f"{srv.http}/api/v1/actors")["actors"] if a["name"] == "model-0")
        assert row["processed"] == 1 and 0.3 < row["rtf"] < 1.0 and row["rss_bytes"] > 10 * 2**20
        os.kill(model["pid"], signal.SIGKILL)
        wait_for(lambda: (r := actor(srv, "model-0"))["pid"] not in (None, model["pid"]) and r["state"] == "running")
        row = next(a for a in get_json(f"{srv.http}/api/v1/actors")["actors"] if a["name"] == "model-0")
        assert row["pid"] != model["pid"] and row["restarts"] == 1 and row["last_exit"] == "signal SIGKILL"
        top = subprocess.run([sys.executable, "-m", "streamer.supervisor.cli", "top", "--once", "--addr", srv.http],
                             capture_output=True, text=True, timeout=30)
        assert top.returncode == 0, top.stderr
        lines = top.stdout.splitlines()
        pid_at = lines[0].index("PID")  # the column's place follows the longest actor name (`segmenter-1` in shards)
        shown = [line[pid_at:].split()[0] for line in lines if line.startswith("model-0 ")]
        assert shown == [str(row["pid"])], top.stdout
    finally:
        srv.stop()


def test_actors_first_read_from_either_front_has_cpu_and_memory_and_both_share_one_window(tmp_path: Path) -> None:
    # Two fronts on one port: every read below is a new TCP connection, so the kernel's
    # SO_REUSEPORT hash spreads them over both, and each front gets its own first read.
    srv = started(tmp_path)
    try:
        def read() -> tuple[float, float, dict[str, Any]]:
            began = time.monotonic()
            table = get_json(f"{srv.http}/api/v1/actors")  # urlopen: a fresh connection every time
            return began, time.monotonic(), table

        def check_usage(table: dict[str, Any]) -> None:
            assert {a["state"] for a in table["actors"]} == {"running"}, table
            for a in table["actors"]:
                assert a["rss_bytes"] is not None and a["rss_bytes"] > 0, (table["front_pid"], a)
                assert a["cpu_percent"] is not None and a["cpu_percent"] >= 0, (table["front_pid"], a)
                assert a["cpu_window_s"] is not None and a["cpu_window_s"] > 0, (table["front_pid"], a)

        first_began, first_ended, table = read()
        check_usage(table)  # the very first read, before anyone has sampled anything
        firsts = {table["front_pid"]}

        def both_fronts_read_first() -> bool:
            table = read()[2]
            check_usage(table)
            firsts.add(table["front_pid"])
            return len(firsts) == 2

        wait_for(both_fronts_read_first)

        # A second after the first read, CPU is the share since an earlier read, whichever front
        # took it: a window no longer than the time since that first read. A front with its own
        # clock would answer with CPU since the process started, a longer window.
        late: dict[int, int] = {}

        def both_fronts_show_the_shared_window() -> bool:
            began, ended, table = read()
            check_usage(table)
            if began >= first_ended + 1.0:
                for a in table["actors"]:  # (the figure is rounded to 0.01 s: half of that either way)
                    assert a["cpu_window_s"] <= ended - first_began + 0.005, \
                        (table["front_pid"], a, ended - first_began)
                late[table["front_pid"]] = late.get(table["front_pid"], 0) + 1
            return len(late) == 2 and min(late.values()) >= 3

        wait_for(both_fronts_show_the_shared_window)

        top = subprocess.run([sys.executable, "-m", "streamer.supervisor.cli", "top", "--once", "--addr", srv.http],
                             capture_output=True, text=True, timeout=30)
        assert top.returncode == 0, top.stderr
        rows = [line.split() for line in top.stdout.splitlines()[1:-1]]
        assert len(rows) == len(table["actors"]) and all(float(r[3]) >= 0 and float(r[4]) > 0 for r in rows), top.stdout
    finally:
        srv.stop()


def test_a_real_prometheus_scrapes_every_process_through_the_front(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus package is required (bash .ci/run installs it)")
    srv = started(tmp_path)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: streamer\n"
                   f"    static_configs:\n      - targets: ['127.0.0.1:{srv.port}']\n")
    prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t = asyncio.run(converse(srv.ws(), stream_steps(speech().samples[None, :], 16000, False)))
        assert check_regions_answered(t, 0) == (4, 0)

        def query(q: str) -> list[dict[str, Any]]:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            try:
                result: list[dict[str, Any]] = get_json(url)["data"]["result"]
            except OSError:
                return []
            return result

        def scraped() -> bool:
            """Every stage's totals as of a heartbeat after the stream, in a scrape after that."""
            models = query('streamer_stage_items_total{role="model"}')
            audio = {r["metric"]["stage"]: float(r["value"][1])
                     for r in query("sum by (stage) (streamer_stage_audio_seconds_total)")}
            return (sum(float(r["value"][1]) for r in models) >= 4  # every region was an inference
                    and all(audio.get(stage, 0) > 0 for stage in ("decoder", "segmenter", "model")))

        wait_for(scraped, 30)
        cpu = {r["metric"]["role"]: float(r["value"][1])
               for r in query("sum by (role) (process_cpu_seconds_total)")}
        # A process's page is labelled by the process (several actors share one under `[actors]
        # placement` "paired" or "shards"), its stage metrics by the actor that counted them.
        assert set(cpu) == metrics_roles(srv)
        assert all(np.isfinite(v) and v > 0 for v in cpu.values()), cpu
    finally:
        prom.terminate()
        prom.wait(10)
        srv.stop()
