"""Chaos: ten sessions stream speech while model actors are SIGKILLed about every second and
the decoder and the segmenter once each. Every session ends; every region gets exactly one
final or exactly one error; restarts are counted; nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import aiohttp

from audio import speech
from server import Server, alive, shm_segments, wait_for
from wire import Transcript, check_regions_answered, converse, stream_steps

CHAOS_S = 10.0
SESSIONS = 10


def killer(srv: Server, stop: threading.Event, kills: Counter[str], seed: int) -> None:
    """A model about every second; the decoder at 3 s and the segmenter at 6.5 s."""
    rng = random.Random(seed)
    began = time.monotonic()
    plan = [(3.0, "decoder"), (6.5, "segmenter")]
    next_model = 0.7
    while not stop.is_set() and time.monotonic() - began < CHAOS_S:
        now = time.monotonic() - began
        target: str | None = None
        if plan and now >= plan[0][0]:
            target = plan.pop(0)[1]
        elif now >= next_model:
            target = "model"
            next_model = now + rng.uniform(0.6, 1.4)
        if target is not None:
            rows = [a for a in srv.actors() if a["role"] == target and a["state"] == "running" and a["pid"]]
            if rows:
                row = rng.choice(rows)
                with contextlib.suppress(ProcessLookupError):  # it may be dying already
                    os.kill(row["pid"], signal.SIGKILL)
                    kills[row["name"]] += 1
        time.sleep(0.05)


async def clients(srv: Server, steps: list[dict[str, object] | bytes | str], refused: list[int]) -> list[Transcript]:
    done: list[Transcript] = []
    end = time.monotonic() + CHAOS_S

    async def one_after_another(i: int) -> None:
        await asyncio.sleep(i * 0.1)
        while time.monotonic() < end:
            try:
                done.append(await converse(srv.ws(), steps, timeout=60, pace_s=0.02))
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 503, e  # models restarting: the server sheds new sessions for a moment
                refused.append(i)
                await asyncio.sleep(0.3)
                continue
            if done[-1].close_code == 1011:
                await asyncio.sleep(0.3)  # a stage is restarting: reconnect as a client would

    await asyncio.gather(*(one_after_another(i) for i in range(SESSIONS)))
    return done


def test_sessions_survive_killed_actors(tmp_path: Path) -> None:
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_FAKE_MODE": "sleep", "STREAMER_MODEL_FAKE_DELAY": "0.2",
                                        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.05"})
    srv.start()
    run_id = srv.run_id()
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning.",
                "Every region gets exactly one final result."), gap_s=0.8)
    steps = stream_steps(s.samples[None, :], 16000, False)
    kills: Counter[str] = Counter()
    stop = threading.Event()
    chaos = threading.Thread(target=killer, args=(srv, stop, kills, int(time.time())), daemon=True)
    try:
        chaos.start()
        refused: list[int] = []
        transcripts = asyncio.run(clients(srv, steps, refused))
        stop.set()
        chaos.join()
        answered = [check_regions_answered(t, 0) for t in transcripts]  # every rule, every session
        complete = [t for t in transcripts if t.close_code == 1000]
        assert all(f + e == 3 for (f, e), t in zip(answered, transcripts, strict=True) if t.close_code == 1000)
        assert complete, "no session got through"
        assert kills["decoder"] == kills["segmenter"] == 1 and sum(kills.values()) >= 8
        wait_for(lambda: srv.health()[0] == 200, 20)
        restarts = {a["name"]: a["restarts"] for a in srv.actors()}
        assert all(restarts[name] == n for name, n in kills.items()), (restarts, kills)
        children = srv.descendants()
        print(f"\n{len(transcripts)} sessions ({len(complete)} complete, {len(transcripts) - len(complete)} "
              f"failed by a stage's death), kills {dict(kills)}, finals {sum(f for f, _ in answered)}, "
              f"region errors {sum(e for _, e in answered)}, handshakes refused while models restarted "
              f"{len(refused)}")
    finally:
        stop.set()
        srv.stop()
    assert srv.proc is not None and srv.proc.returncode == 0
    assert alive(children) == [] and shm_segments(run_id) == []
