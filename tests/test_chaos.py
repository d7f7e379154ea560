"""Chaos: six sessions stream speech at four times real time into a busy-CPU model while, for
30 s, a random actor of any role but the front is SIGKILLed every 0.5 s (the decoder and the
segmenter several times each). No client notices: every region gets exactly one final, no
error, no duplicate, every session ends 1000. The clients are the `websockets` library with
its default keepalive, which drops a connection whose pongs stop for 20 s.

The restart intensity, the back-off ceiling and the attempt limit are raised here: escalation
and the poison-item limit are tested on their own (test_supervision.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from streamer.client.streamer_client import Pcm, Report, stream

from audio import pcm_bytes, speech
from conversation import Transcript, audio_frames, check_regions_answered, start_msg
from server import SPLIT, Server, alive, shm_segments, wait_for

CHAOS_S = 30.0
KILL_EVERY_S = 0.5
SESSIONS = 6
SPEED = 4.0  # times real time
TARGETS = ("model-0", "model-1", "decoder", "segmenter")
ENV = {
    # The decoder and the segmenter die alone and no client notices: processes of their own
    # (SHARD_ENV below overrides it: a shard's death is seen by its own sessions).
    **SPLIT,
    "STREAMER_MODEL_FAKE_MODE": "cpu", "STREAMER_MODEL_FAKE_DELAY": "0.02",
    "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.05", "STREAMER_MODEL_MAX_ATTEMPTS": "50",
    "STREAMER_ADMISSION_MAX_BUSY": "1000", "STREAMER_ADMISSION_MAX_QUEUE_DELAY_S": "1000",
    **{f"STREAMER_SUPERVISOR_{role.upper()}_{key}": value for role in ("model", "decoder", "segmenter")
       for key, value in (("INTENSITY", "1000"), ("BACKOFF_MAX_S", "0.4"))},
}


def killer(srv: Server, stop: threading.Event, kills: Counter[str], seed: int) -> None:
    """Every KILL_EVERY_S, the next of a shuffled round of every target that is running."""
    rng = random.Random(seed)
    began = time.monotonic()
    queue: list[str] = []
    while not stop.is_set() and time.monotonic() - began < CHAOS_S:
        if not queue:
            queue = rng.sample(TARGETS, len(TARGETS))
        name = queue.pop()
        row = next((a for a in srv.actors() if a["name"] == name), None)
        if row is not None and row["state"] == "running" and row["pid"]:
            with contextlib.suppress(ProcessLookupError):  # it may be dying already
                os.kill(row["pid"], signal.SIGKILL)
                kills[name] += 1
        stop.wait(KILL_EVERY_S)


async def one_stream(url: str, frames: list[bytes]) -> Transcript:
    messages: list[dict[str, Any]] = []
    async with connect(url) as ws:  # the library's defaults: ping every 20 s, give up 20 s later
        async def read() -> None:
            async for msg in ws:
                messages.append(json.loads(msg))

        reader = asyncio.create_task(read())
        await ws.send(json.dumps(start_msg(1, 16000, False)))
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(0.1 / SPEED)  # pacing: 0.1 s frames at SPEED times real time
        await ws.send(json.dumps({"request": "stop", "disconnect": True}))
        await asyncio.wait_for(reader, 120)
        return Transcript(messages, ws.close_code)


async def clients(url: str, frames: list[bytes]) -> list[Transcript]:
    done: list[Transcript] = []
    end = time.monotonic() + CHAOS_S

    async def one_after_another(i: int) -> None:
        await asyncio.sleep(i * 0.15)  # pacing: the clients arrive one after another
        while time.monotonic() < end:
            done.append(await one_stream(url, frames))

    await asyncio.gather(*(one_after_another(i) for i in range(SESSIONS)))
    return done


@pytest.mark.alone  # races kills against keepalive timers under a busy CPU: runs by itself (make test)
def test_no_session_notices_actors_dying_every_half_second(tmp_path: Path) -> None:
    srv = Server(tmp_path / "run", env=ENV).start()
    run_id = srv.run_id()
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.",
                "Every region gets exactly one final result."), gap_s=0.8)
    frames = audio_frames(s.samples[None, :], False)
    kills: Counter[str] = Counter()
    stop = threading.Event()
    chaos = threading.Thread(target=killer, args=(srv, stop, kills, int(time.time())), daemon=True)
    try:
        chaos.start()
        transcripts = asyncio.run(clients(srv.ws(), frames))
        stop.set()
        chaos.join()
        print(f"\n{len(transcripts)} streams, kills {dict(kills)}")
        assert [t.close_code for t in transcripts] == [1000] * len(transcripts)
        assert [m for t in transcripts for m in t.messages if m["type"] == "error"] == []
        assert all(check_regions_answered(t, 0) == (3, 0) for t in transcripts)  # one final each, in order
        assert kills["decoder"] >= 3 and kills["segmenter"] >= 3 and sum(kills.values()) >= 40, kills
        wait_for(lambda: srv.health()[0] == 200, 20)

        def restarted() -> bool:  # (health is 200 with one model actor up: the other may still be restarting)
            restarts = {a["name"]: a["restarts"] for a in srv.actors()}
            return all(restarts[name] == n for name, n in kills.items())

        wait_for(restarted, 20)
        children = srv.descendants()
    finally:
        stop.set()
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0
    assert alive(children) == [] and shm_segments(run_id) == []


# -- shards: a shard's death costs its own sessions, which the client script resumes ---------------------

SHARD_CHAOS_S = 40.0
SHARD_KILL_EVERY_S = 8.0  # each shard every 16 s: a resumed 11 s stream can reach its next final
SHARD_ENV = {**ENV, "STREAMER_ACTORS_PLACEMENT": "shards", "STREAMER_ACTORS_FRONTS": "2",
             **{f"STREAMER_SUPERVISOR_FRONT_{key}": value for key, value in (("INTENSITY", "1000"),
                                                                             ("BACKOFF_MAX_S", "0.4"))}}


def shard_killer(srv: Server, stop: threading.Event, kills: Counter[str], seed: int) -> None:
    """Every KILL_EVERY_S a model actor; every SHARD_KILL_EVERY_S, instead, a shard's process
    (a front with its decoder and segmenter), the two shards in turn."""
    rng = random.Random(seed)
    began = time.monotonic()
    shard_at = began + SHARD_KILL_EVERY_S
    shards = 0
    while not stop.is_set() and time.monotonic() - began < SHARD_CHAOS_S:
        if time.monotonic() >= shard_at:
            name, shard_at = f"front-{shards % 2}", shard_at + SHARD_KILL_EVERY_S
            shards += 1
        else:
            name = rng.choice(("model-0", "model-1"))
        row = next((a for a in srv.actors() if a["name"] == name), None)
        if row is not None and row["state"] == "running" and row["pid"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(row["pid"], signal.SIGKILL)
                kills[name] += 1
        stop.wait(KILL_EVERY_S)


@pytest.mark.alone  # as above
def test_shard_kills_cost_only_their_own_sessions_which_the_client_resumes(tmp_path: Path) -> None:
    """Model actors die every half second and each shard's whole process every few seconds,
    under six clients of `streamer-client`'s own `stream` streaming speech one stream after
    another. A model's death goes unnoticed; a shard's closes its own sessions 1006 at once, and
    the client resumes each from its last final on whichever shard takes it. So every stream
    ends 1000 with each of its three regions answered exactly once and no error, and only
    streams that were on a killed shard ever reconnected."""
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.",
                "Every region gets exactly one final result."), gap_s=0.8)
    pcm = Pcm(pcm_bytes(s.samples[None, :], False), 1, 16000, False)
    srv = Server(tmp_path / "run", env=SHARD_ENV).start()
    kills: Counter[str] = Counter()
    stop = threading.Event()
    chaos = threading.Thread(target=shard_killer, args=(srv, stop, kills, int(time.time())), daemon=True)

    async def run_clients() -> list[Report]:
        reports: list[Report] = []
        end = time.monotonic() + SHARD_CHAOS_S

        async def one_after_another(i: int) -> None:
            await asyncio.sleep(i * 0.15)  # pacing: the clients arrive one after another
            while time.monotonic() < end:
                reports.append(await stream(srv.ws(), pcm, real_time=True, reconnects=20))

        await asyncio.gather(*(one_after_another(i) for i in range(SESSIONS)))
        return reports

    try:
        run_id = srv.run_id()
        chaos.start()
        reports = asyncio.run(run_clients())
        stop.set()
        chaos.join()
        print(f"\n{len(reports)} streams, {sum(r.reconnects for r in reports)} reconnects, kills {dict(kills)}")
        assert [r.close_code for r in reports] == [1000] * len(reports)
        assert [m for r in reports for m in r.messages if m["type"] == "error"] == []
        for r in reports:
            finals = [m for m in r.of_type("segment") if m.get("is_final") is not False]
            assert len(finals) == 3, [(m["start_time"], m["end_time"]) for m in finals]
            assert all(a["end_time"] <= b["start_time"] for a, b in itertools.pairwise(finals)), finals
        assert kills["front-0"] >= 2 and kills["front-1"] >= 2, kills
        assert any(r.reconnects for r in reports) and any(not r.reconnects for r in reports)
        wait_for(lambda: srv.health()[0] == 200, 20)
        restarts = {a["name"]: a["restarts"] for a in srv.actors()}
        assert all(restarts[name] == n for name, n in kills.items()), (restarts, kills)
        children = srv.descendants()
    finally:
        stop.set()
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0
    assert alive(children) == [] and shm_segments(run_id) == []
