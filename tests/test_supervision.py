"""Supervision that heals: hung and killed actors come back, their work is redone or answered
with one error, streams whose state died fail cleanly, crash loops escalate, SIGTERM drains."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soundfile

from audio import SENTENCES, model_samples, noise, speech
from conversation import (
    Action,
    Transcript,
    at_audio,
    audio_frames,
    check_regions_answered,
    check_simple_counts,
    converse,
    raw_frame,
    raw_handshake,
    start_msg,
    stream_steps,
    until,
)
from server import CLIENT, SPLIT, Server, actor, alive, process_names, shm_segments, wait_for

SLOW_MODEL = {  # every item stays in flight for a while, without eating the test machine's CPU
    "STREAMER_MODEL_FAKE_MODE": "sleep",
    "STREAMER_MODEL_FAKE_DELAY": "0.6",
}


# Tests here pause processes with SIGSTOP, some for 20 s and more on a loaded machine: the
# supervisor must not find them hung (10 s) and change the scenario. A test that means to
# find a hang sets its own.
PATIENT = {f"STREAMER_SUPERVISOR_{role}_HANG_TIMEOUT_S": "120" for role in ("FRONT", "DECODER", "SEGMENTER", "MODEL")}


def started(tmp_path: Path, **env: str) -> Server:
    srv = Server(tmp_path / "run", env={**PATIENT, **env})
    return srv.start()


def kill(srv: Server, name: str) -> Action:
    """An action for `converse`: SIGKILL `name` there."""
    return lambda _: os.kill(actor(srv, name)["pid"], signal.SIGKILL)


def in_background(coro: Coroutine[Any, Any, Transcript]) -> tuple[threading.Thread, list[Transcript]]:
    """A client in a thread of its own: its transcript lands in the list once it is done."""
    outcome: list[Transcript] = []
    client = threading.Thread(target=lambda: outcome.append(asyncio.run(coro)), daemon=True)
    client.start()
    return client, outcome


def decoded(srv: Server) -> float:
    """Seconds of audio the decoder process has decoded, as of its last heartbeat."""
    return srv.metric("decoder", "streamer_stage_audio_seconds_total")


async def admitted(url: str, steps: list[dict[str, object] | bytes | str], within_s: float = 20.0) -> Transcript:
    """`converse`, knocking again while the server says 503 (at capacity: a backlog it is still
    working off), as a client honouring Retry-After would."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await converse(url, steps, timeout=30)
        except aiohttp.WSServerHandshakeError as e:
            if e.status != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)  # pacing: a client's back-off before it knocks again


def two_sentences() -> list[dict[str, object] | bytes | str]:
    s = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning."))
    return stream_steps(s.samples[None, :], 16000, False)


@pytest.mark.alone  # races 0.2 s heartbeats against a 1.5 s hang timeout: runs by itself (make test)
def test_a_hung_actor_is_found_by_heartbeats_killed_and_restarted(tmp_path: Path) -> None:
    srv = started(tmp_path, STREAMER_SUPERVISOR_HEARTBEAT_S="0.2", STREAMER_SUPERVISOR_MODEL_HANG_TIMEOUT_S="1.5")
    try:
        old = actor(srv, "model-0")
        os.kill(old["pid"], signal.SIGSTOP)  # alive, but silent
        wait_for(lambda: actor(srv, "model-0")["pid"] not in (None, old["pid"])
                 and actor(srv, "model-0")["state"] == "running", 15)
        row = actor(srv, "model-0")
        assert row["restarts"] == 1 and "hung" in row["last_exit"] and "SIGKILL" in row["last_exit"]
        assert not alive([p for p in srv.descendants() if p.pid == old["pid"]])
        t = asyncio.run(converse(srv.ws(), two_sentences()))
        assert check_regions_answered(t, 0) == (2, 0)
    finally:
        srv.stop()


def test_work_in_flight_on_a_killed_model_is_redone_on_another(tmp_path: Path) -> None:
    # One front, so one segmenter in any placement: the one whose gauges are read below, which hands
    # the session's work out (with a segmenter per front, another's first choice may be model-1).
    srv = started(tmp_path, **SLOW_MODEL, STREAMER_ACTORS_FRONTS="1")
    try:
        # The first region handed out goes to model-0 (the first of two idle actors), once the
        # segmenter can reach both: their `Ready` came and their `Forget` went. (A model stopped
        # before its connection is up is never reachable, and the work goes to model-1.) Stopped,
        # it keeps that work unanswered until the kill, however slow the machine.
        wait_for(lambda: srv.metric("segmenter", "streamer_dispatch_reachable_models") == 2, 20)
        model = actor(srv, "model-0")["pid"]
        os.kill(model, signal.SIGSTOP)
        client, outcome = in_background(converse(srv.ws(), two_sentences()))
        wait_for(lambda: srv.metric("segmenter", "streamer_dispatch_handed") >= 1, 20)
        os.kill(model, signal.SIGKILL)
        client.join(60)
        (t,) = outcome
        assert check_regions_answered(t, 0) == (2, 0)
        wait_for(lambda: actor(srv, "model-0")["restarts"] == 1, 10)
        assert "redoing work" in srv.log()
    finally:
        srv.stop()


def test_past_its_attempts_a_region_gets_exactly_one_error(tmp_path: Path) -> None:
    srv = started(tmp_path, STREAMER_MODEL_FAKE_PANIC_RATE="1.0")
    try:
        s = speech(("The quick brown fox jumps over the lazy dog.",))
        t = asyncio.run(converse(srv.ws(), stream_steps(s.samples[None, :], 16000, False)))
        assert check_regions_answered(t, 0) == (0, 1)
        (err,) = t.of_type("error")
        assert "model actor died 3 times" in err["message"]
        wait_for(lambda: sum(a["restarts"] for a in srv.actors() if a["role"] == "model") >= 3, 10)
        assert srv.log().count("signal SIGABRT") >= 3  # os.abort(): died as a native crash would
    finally:
        srv.stop()


def test_panic_rate_over_a_long_stream_answers_every_region(tmp_path: Path) -> None:
    srv = started(tmp_path, STREAMER_MODEL_FAKE_PANIC_RATE="0.2", STREAMER_SUPERVISOR_MODEL_INTENSITY="40")
    try:
        s = speech(("Every region gets exactly one final result.", "Please call me back tomorrow morning.") * 6,
                   gap_s=0.8)
        t = asyncio.run(converse(srv.ws(), stream_steps(s.samples[None, :], 16000, False), timeout=90))
        finals, errors = check_regions_answered(t, 0)
        assert finals + errors == len(s.truth) == 12
        # (The supervisor logs a death after telling the others of it: both counts are read each time.)
        wait_for(lambda: sum(a["restarts"] for a in srv.actors() if a["role"] == "model")
                 == srv.log().count("died: signal SIGABRT"), 10)
    finally:
        srv.stop()


def regions(t: Transcript) -> list[tuple[float, float]]:
    return [(m["start_time"], m["end_time"]) for m in t.finals(0)]


def close_enough(got: list[tuple[float, float]], want: list[tuple[float, float]], tolerance: float = 0.03) -> bool:
    return len(got) == len(want) and all(abs(a - c) <= tolerance and abs(b - d) <= tolerance
                                         for (a, b), (c, d) in zip(got, want, strict=True))


@pytest.mark.parametrize(("role", "rate", "route"), [("decoder", 16000, "segmented"), ("segmenter", 16000, "simple"),
                                                     ("decoder", 44100, "simple"), ("segmenter", 48000, "segmented")])
def test_a_dead_stage_goes_unnoticed_its_streams_are_replayed_from_their_checkpoints(
        tmp_path: Path, role: str, rate: int, route: str) -> None:
    srv = started(tmp_path, **SPLIT)  # the stage dies alone, not with the front that holds the stream
    try:
        s = speech(SENTENCES[:3], rate=rate, gap_s=0.8)
        steps = stream_steps(s.samples[None, :], rate, False)
        alone = asyncio.run(converse(srv.ws(route), steps, pace_s=0.03))
        into_the_second_sentence = sum(s.truth[1]) / 2
        t = asyncio.run(converse(srv.ws(route), at_audio(steps, into_the_second_sentence, kill(srv, role)),
                                 pace_s=0.03))
        assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
        if route == "segmented":
            check_regions_answered(t, 0)
            assert close_enough(regions(t), regions(alone)), (regions(t), regions(alone))
        else:
            check_simple_counts(t, 0, model_samples(s.samples.shape[0], rate))
            assert [m["count"] for m in t.of_type("segment")] == [m["count"] for m in alone.of_type("segment")]
        wait_for(lambda: actor(srv, role)["restarts"] == 1, 10)
        assert "replaying the stream" in srv.log()
    finally:
        srv.stop()


def test_a_crash_loop_escalates_to_a_nonzero_exit_and_leaves_nothing(tmp_path: Path) -> None:
    srv = started(tmp_path, STREAMER_SUPERVISOR_MODEL_INTENSITY="2", STREAMER_SUPERVISOR_MODEL_BACKOFF_STEP_S="0.05")
    run_id = srv.run_id()
    children = srv.descendants()
    killed: set[int] = set()
    assert srv.proc is not None
    deadline = time.monotonic() + 30
    while srv.proc.poll() is None and time.monotonic() < deadline:
        try:
            pid = actor(srv, "model-0")["pid"]
        except (FileNotFoundError, ValueError):
            pid = None
        if pid and pid not in killed:
            killed.add(pid)
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)  # polling for the next model-0 to kill
    assert srv.wait(30) == 1
    assert len(killed) == 3  # two restarts allowed, the third crash within the period escalates
    assert "giving up" in srv.log()
    assert alive(children) == [] and shm_segments(run_id) == []


@pytest.mark.parametrize("honcho", [False, True], ids=["supervisor", "honcho"])
def test_sigterm_mid_stream_delivers_finals_then_closes_1001(fresh_server: Server, honcho: bool) -> None:
    """SIGTERM to the supervisor, or to `honcho start` (what Ctrl-C makes honcho do: SIGTERM to
    the process group of each Procfile line). Regression (honcho): that SIGTERM reached every
    child at once, so the pipeline stopped under the draining fronts, and the fork server died
    with it (every child "exit 255"); and the `sh -c` honcho runs a line with died first, so
    honcho returned while the supervisor went on alone."""
    srv = fresh_server
    srv.honcho = honcho
    srv.start()
    run_id = srv.run_id()
    children = srv.descendants()
    s = speech()

    async def terminate(messages: list[dict[str, Any]]) -> None:
        def one_answered_one_open() -> bool:
            kinds = [m["type"] for m in messages]
            return any(m.get("is_final") for m in messages) and kinds.count("active") == kinds.count("inactive") + 1

        await until(one_answered_one_open)
        srv.signal(signal.SIGTERM)

    steps = at_audio(stream_steps(s.samples[None, :], 16000, False), s.truth[1][0] + 0.8, terminate)
    t = asyncio.run(converse(srv.ws(), steps, pace_s=0.1))
    finals, errors = check_regions_answered(t, 0, close_code=1001)  # the open region was closed and finalised
    assert finals >= 2 and errors == 0 and not t.of_type("error")
    assert srv.wait(30) == (143 if honcho else 0)  # honcho's own code for "stopped by SIGTERM"
    assert alive(children) == [] and shm_segments(run_id) == []
    assert not honcho or "server.1 stopped (rc=0)" in srv.log()  # the supervisor's, after its children
    stops = re.findall(r"supervisor: stopped (\S+): (.*)", srv.log())
    assert sorted(name for name, _ in stops) == sorted(process_names(srv))
    assert {how for _, how in stops} == {"exit 0"}, stops  # each stopped by the supervisor, in its turn


def test_a_dead_front_drops_only_its_own_sessions(tmp_path: Path) -> None:
    """Twelve sessions spread by the kernel over two fronts; front-0 is SIGKILLed mid-stream: its
    sessions see 1006, every other one finishes as if nothing happened."""
    srv = started(tmp_path)
    try:
        s = speech(SENTENCES[:3], gap_s=0.8)
        sessions = 12

        async def all_of_them() -> list[Transcript]:
            arrived = 0
            everyone_midway = asyncio.Event()

            async def midway(_: object) -> None:
                """Every session is mid-stream, wherever it is, when front-0 dies."""
                nonlocal arrived
                arrived += 1
                if arrived == sessions:
                    os.kill(actor(srv, "front-0")["pid"], signal.SIGKILL)
                    everyone_midway.set()
                async with asyncio.timeout(30):
                    await everyone_midway.wait()

            steps = at_audio(stream_steps(s.samples[None, :], 16000, False), s.seconds / 2, midway)
            return list(await asyncio.gather(*(converse(srv.ws(), steps, pace_s=0.03) for _ in range(sessions))))

        transcripts = asyncio.run(all_of_them())
        codes = sorted(t.close_code or 0 for t in transcripts)
        assert set(codes) <= {1000, 1006} and 1000 in codes and 1006 in codes, codes
        for t in transcripts:
            if t.close_code == 1000:
                assert check_regions_answered(t, 0) == (3, 0)
        wait_for(lambda: actor(srv, "front-0")["restarts"] == 1, 10)
    finally:
        srv.stop()


@pytest.mark.long
def test_the_client_script_reconnects_when_its_front_dies_and_says_so(tmp_path: Path) -> None:
    srv = started(tmp_path, STREAMER_ACTORS_FRONTS="1")
    try:
        s = speech(SENTENCES[:3], gap_s=0.8)
        wav = tmp_path / "speech.wav"
        soundfile.write(wav, s.samples, 16000, subtype="PCM_16")
        lines: list[str] = []
        with subprocess.Popen([*CLIENT, "-i", str(wav), "--addr", srv.ws(), "--real-time",
                               "--reconnects", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as client:
            assert client.stdout is not None and client.stderr is not None
            out = client.stdout

            def read() -> None:
                for line in out:
                    lines.append(line)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            try:
                # Mid-sentence: the client has been told a region began (it prints each message as it comes).
                wait_for(lambda: any('"type": "active"' in line for line in lines), 30)
                os.kill(actor(srv, "front-0")["pid"], signal.SIGKILL)
                code = client.wait(60)
                reader.join(10)
                err, stdout = client.stderr.read(), "".join(lines)
            finally:
                if client.poll() is None:
                    client.kill()
        assert code == 0, err
        assert "connection lost (close code 1006): reconnecting, resuming at" in err
        assert "reconnected 1 times" in stdout
        finals = [json.loads(line.split("s ", 1)[1]) for line in stdout.splitlines()
                  if '"is_final": true' in line]
        ends = [f["end_time"] for f in finals]
        assert ends == sorted(ends) and len(finals) >= 3  # every sentence answered, in order, once or more
        assert abs(ends[-1] - s.truth[-1][1]) < 0.2
    finally:
        srv.stop()


def test_a_result_is_never_lost_between_a_model_that_dies_and_a_front_that_is_slow_to_read(tmp_path: Path) -> None:
    """A model restarted while its front is paused cannot finish connecting to that front: a result
    it sends there waits in its own queue. When it then died after returning its credit, that
    result was gone and nothing redid it; every later final waited behind the gap until the stop
    timeout (1011). Results now travel inside the credit, to the segmenter: the dispatcher counts
    an item answered only once its answer has left the model."""
    # A paused front beside a live segmenter: in a shard, pausing the front would pause its segmenter too.
    srv = started(tmp_path, **SPLIT, STREAMER_ACTORS_FRONTS="1", STREAMER_ACTORS_MODELS="1",
                  STREAMER_MODEL_FAKE_MODE="sleep", STREAMER_MODEL_FAKE_DELAY="0.2",
                  STREAMER_SERVER_STOP_TIMEOUT_S="40")
    try:
        s = speech(("The quick brown fox jumps over the lazy dog.",))
        front, model = actor(srv, "front-0")["pid"], actor(srv, "model-0")["pid"]
        wait_for(lambda: srv.metric("segmenter", "streamer_dispatch_reachable_models") == 1, 20)
        os.kill(model, signal.SIGSTOP)  # the region's work will wait in its queue
        outcome: list[Transcript] = []

        async def stream() -> None:
            outcome.append(await converse(srv.ws(), stream_steps(s.samples[None, :], 16000, False), timeout=60))

        client = threading.Thread(target=lambda: asyncio.run(stream()), daemon=True)
        client.start()
        wait_for(lambda: srv.metric("segmenter", "streamer_dispatch_handed") >= 1, 15)  # cut and handed out
        os.kill(front, signal.SIGSTOP)
        os.kill(model, signal.SIGKILL)  # its work goes to its replacement, which cannot reach the paused front
        # (Within the stop timeout, which the paused front counts from before its pause.)
        wait_for(lambda: actor(srv, "model-0")["pid"] not in (None, model)
                 and actor(srv, "model-0").get("processed", 0) >= 1, 25)
        os.kill(actor(srv, "model-0")["pid"], signal.SIGKILL)  # after its credit went back
        os.kill(front, signal.SIGCONT)
        client.join(60)
        (t,) = outcome
        assert check_regions_answered(t, 0) == (1, 0)
    finally:
        srv.stop()


def test_a_replay_larger_than_the_fronts_pool_goes_in_pieces_and_loses_nothing(tmp_path: Path) -> None:
    """A decoder death while a front keeps more audio for a stream than its whole pool holds: the
    replay used to be one allocation that could never fit; the front's flush raised at every try,
    health stayed 200 and every session of that front stalled. It now goes as packets that fit."""
    seconds, rate = 20.0, 48000  # stereo float: 384 KB a second; the 512 KiB pool below holds 1.4 s
    # A decoder process of its own, fed through the front's pool (a shard's front hands its decoder
    # the client's bytes in memory, and its decoder dies with it).
    srv = started(tmp_path, **SPLIT, STREAMER_ACTORS_FRONTS="1", STREAMER_POOLS_FRONT_SLOTS="64",
                  STREAMER_LIMITS_MAX_FRAME_BYTES=str(256 << 10), STREAMER_SERVER_STOP_TIMEOUT_S="10")
    try:
        models = [actor(srv, f"model-{i}")["pid"] for i in range(2)]
        for pid in models:
            os.kill(pid, signal.SIGSTOP)  # nothing is answered: the front keeps every byte for a replay
        x = noise(seconds, rate)[None, :].repeat(2, axis=0)
        outcome: list[Transcript] = []

        async def stream() -> None:
            outcome.append(await converse(srv.ws("simple"), stream_steps(x, rate, True), timeout=90))

        client = threading.Thread(target=lambda: asyncio.run(stream()), daemon=True)
        client.start()
        # 1.5 s of both channels' chunks (0.5 s each) wait for a model: the front keeps 576 KB or more,
        # more than its pool. (Unanswered, the stream's budget lets in 2 s and then waits.)
        wait_for(lambda: actor(srv, "segmenter").get("inflight", 0) >= 6, 30)
        os.kill(actor(srv, "decoder")["pid"], signal.SIGKILL)
        wait_for(lambda: "replaying the stream from 0.00 s" in srv.log(), 10)
        for pid in models:
            os.kill(pid, signal.SIGCONT)
        client.join(90)
        (t,) = outcome
        assert t.close_code == 1000, t.messages[-3:]
        check_simple_counts(t, 0, int(seconds * 16000))
        check_simple_counts(t, 1, int(seconds * 16000))
        after = asyncio.run(admitted(srv.ws("simple"), stream_steps(noise(2.0)[None, :], 16000, False)))
        assert after.close_code == 1000, after.messages[-3:]  # the front is not wedged
        check_simple_counts(after, 0, 32000)
    finally:
        srv.stop()


def test_a_dead_decoders_queued_audio_read_after_its_replacements_replay_is_ignored(tmp_path: Path) -> None:
    """The segmenter is behind (paused here) with the decoder's packets waiting in its inbox when
    the decoder dies. ZeroMQ then hands it what the dead decoder had queued interleaved with what
    the replacement sends: a stream's replay `Open`, then audio of the dead run, reclaimed by the
    replacement at its start. That audio used to mark the replayed stream as waiting for a replay
    that had already come: nothing more of it was taken, and its client got an error and 1011 once
    the results stopped (8 of 12 sessions in three runs). Each item now says which run of its
    stream it belongs to, and the segmenter takes nothing of a run a replay superseded."""
    # The decoder dies while the segmenter lives on: each a process of its own. Heartbeats every
    # 0.2 s: the decoder's totals, which say how far it has got, follow it closely.
    srv = started(tmp_path, **SPLIT, STREAMER_SERVER_STOP_TIMEOUT_S="8", STREAMER_SUPERVISOR_HEARTBEAT_S="0.2")
    try:
        s = speech(SENTENCES[:3], gap_s=0.8)
        sessions, midway = 4, round(s.seconds / 2, 1)  # a whole number of 0.1 s frames
        segmenter = actor(srv, "segmenter")["pid"]
        stopped = threading.Event()
        failures: list[BaseException] = []

        def replayed() -> list[float]:
            """Seconds of audio in each replay the fronts have sent (16 kHz, 16 bits)."""
            return [int(n) / 32000 for n in re.findall(r"replaying the stream from \S+ s \((\d+) bytes\)", srv.log())]

        def chaos() -> None:
            try:
                assert stopped.wait(60)
                # The decoder's packets wait in the segmenter's inbox: the decoder has decoded a second
                # more than the sessions had sent (all the segmenter could have read) when it stopped.
                wait_for(lambda: decoded(srv) >= sessions * midway + 1.0, 20)
                decoder = actor(srv, "decoder")["pid"]
                os.kill(decoder, signal.SIGKILL)
                wait_for(lambda: actor(srv, "decoder")["pid"] not in (None, decoder)
                         and actor(srv, "decoder")["state"] == "running", 15)
                # The replacement has sent the replays on: it has decoded all the audio they hold.
                wait_for(lambda: len(r := replayed()) == sessions and decoded(srv) >= sum(r) - 0.01 * sessions, 15)
            except BaseException as e:
                failures.append(e)
            finally:
                os.kill(segmenter, signal.SIGCONT)

        killer = threading.Thread(target=chaos, daemon=True)
        killer.start()

        async def all_of_them() -> list[Transcript]:
            arrived = 0
            everyone_midway = asyncio.Event()

            async def stop_the_segmenter(messages: list[dict[str, Any]]) -> None:
                """Behind from here on, with every stream half sent and answered up to its last whole
                0.5 s chunk. A stream may have only 2 s unanswered at first (its budget's slow
                start): stopped with its answers lagging further (a loaded machine), the decoder
                could not get the second ahead of the segmenter that `chaos` waits for (1 run in 6)."""
                await until(lambda: any(m.get("end_time", 0) >= int(midway * 2) / 2 for m in messages), 20)
                nonlocal arrived
                arrived += 1
                if arrived == sessions:
                    os.kill(segmenter, signal.SIGSTOP)
                    stopped.set()
                    everyone_midway.set()
                async with asyncio.timeout(30):
                    await everyone_midway.wait()

            steps = at_audio(stream_steps(s.samples[None, :], 16000, False), midway, stop_the_segmenter)
            return list(await asyncio.gather(*(converse(srv.ws("simple"), steps, pace_s=0.01)
                                               for _ in range(sessions))))

        transcripts = asyncio.run(all_of_them())
        killer.join(60)
        assert not failures, failures
        for t in transcripts:
            assert t.close_code == 1000 and not t.of_type("error"), t.messages[-2:]
            check_simple_counts(t, 0, s.samples.shape[0])
        assert "reclaimed before it was read" in srv.log()  # the dead run's audio did come late
    finally:
        srv.stop()


def test_a_replay_answers_the_regions_its_client_was_told_of_not_ones_its_fresh_vad_finds(tmp_path: Path) -> None:
    """The segmenter dies as a region's `inactive` reaches the client, its final still with a model.
    The replay starts inside that region with a VAD started afresh, which in a little background
    noise ends the region 20 ms earlier than the one that ran: the client got `inactive` at 10.79 s
    and then a final for 8.64-10.77 s, a region it was never told of (three runs in three). A
    replay now carries the events the client was told of, and the new segmenter makes those."""
    srv = started(tmp_path, **SPLIT, **SLOW_MODEL)  # the segmenter dies alone, under the session's front
    try:
        s = speech(SENTENCES[:3], gap_s=0.8)
        x = s.samples + np.random.default_rng(0).normal(0, 0.003, s.samples.shape).astype(np.float32)
        steps = stream_steps(x[None, :], 16000, False)
        messages: list[dict[str, object]] = []

        async def stream() -> Transcript:
            async with aiohttp.ClientSession() as http, http.ws_connect(srv.ws()) as ws:
                async def read() -> None:
                    async for msg in ws:
                        messages.append(json.loads(msg.data))
                        if [m["type"] for m in messages].count("inactive") == 3 and messages[-1]["type"] == "inactive":
                            os.kill(actor(srv, "segmenter")["pid"], signal.SIGKILL)  # the third final is pending

                reader = asyncio.create_task(read())
                for step in steps:
                    if isinstance(step, bytes):
                        await ws.send_bytes(step)
                        await asyncio.sleep(0.05)  # pacing: twice real time, so events come while audio flows
                    else:
                        await ws.send_json(step)
                await asyncio.wait_for(reader, 60)
                return Transcript(messages, ws.close_code)

        t = asyncio.run(stream())
        assert check_regions_answered(t, 0) == (3, 0)
        assert "replaying the stream" in srv.log()
    finally:
        srv.stop()


def test_streams_whose_abort_died_with_the_decoder_are_forgotten(tmp_path: Path) -> None:
    """Clients leave without `stop` while the decoder is stuck, and then it dies: the `Abort` of
    each of their streams dies with it, and the segmenter kept those streams for good (their
    audio, and a place in the load report the fronts admit by: four here, then eight ...). Every
    front now tells the pipeline which streams it has open; the others are forgotten."""
    srv = started(tmp_path, **SPLIT)  # the decoder dies alone: the fronts and the segmenter live on
    try:
        s = speech(SENTENCES[:2], gap_s=0.8)
        frames = audio_frames(s.samples[None, :], False)
        decoder = actor(srv, "decoder")["pid"]
        clients = []
        for _ in range(4):
            sock = socket.create_connection(("127.0.0.1", srv.port))
            raw_handshake(sock, "127.0.0.1", srv.port, "/api/v1/segmented")
            sock.sendall(raw_frame(1, json.dumps(start_msg(1, 16000, False)).encode()))
            clients.append(sock)
        for frame in frames[:10]:
            for sock in clients:
                sock.sendall(raw_frame(2, frame))
            time.sleep(0.05)  # pacing: frames of 0.1 s at twice real time
        wait_for(lambda: set(srv.per_front("streamer_front_load_streams").values()) == {4.0}, 10)
        os.kill(decoder, signal.SIGSTOP)
        had = srv.per_front("streamer_front_sessions_active")
        sent = srv.per_front("streamer_messages_total", direction="out")
        for sock in clients:
            sock.close()  # gone: no stop, no close frame

        def aborts_sent() -> bool:
            """Every session has ended (its stream's `Abort` queued for the decoder), and every front
            that had one has sent the decoder a packet since (the `Abort` in it, or before it)."""
            ended = sum(srv.per_front("streamer_front_sessions_active").values()) == 0
            now = srv.per_front("streamer_messages_total", direction="out")
            return ended and all(now[k] > sent[k] for k, n in had.items() if n)

        wait_for(aborts_sent, 10)  # the fronts' aborts wait in the stuck decoder's inbox
        os.kill(decoder, signal.SIGKILL)
        wait_for(lambda: actor(srv, "decoder")["pid"] not in (None, decoder)
                 and actor(srv, "decoder")["state"] == "running", 15)
        wait_for(lambda: set(srv.per_front("streamer_front_load_streams").values()) == {0.0}, 10)
        assert "its abort was lost" in srv.log()
    finally:
        srv.stop()


def kill_and_wait(srv: Server, name: str) -> None:
    """SIGKILL `name` and wait for its replacement to be ready."""
    old = actor(srv, name)["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: actor(srv, name)["pid"] not in (None, old) and actor(srv, name)["state"] == "running", 15)


def test_what_a_live_segmenter_makes_of_a_dead_decoders_audio_after_the_replay_is_not_shown(tmp_path: Path) -> None:
    """The decoder dies while the segmenter is behind with a region's end in its inbox. The front
    replays at once, pinning the events it has told the client; the segmenter then works through
    the dead decoder's audio and says `inactive` (10.79 s) before the replay reaches it, and the
    replay, not pinned to that, ends the region at 10.77 s: the client was shown the first and
    answered for the second. The front takes nothing more of a run once it has replayed the
    stream. (Every role here has died once already, so its next restart waits: the dead
    decoder's audio stays readable until the segmenter has worked through it, and no model
    takes the region's first final before the replay cancels it.)"""
    # The decoder dies while the segmenter lives on: each a process of its own. Heartbeats every
    # 0.2 s: the decoder's totals, which say how far it has got, follow it closely.
    srv = started(tmp_path, **SPLIT, **SLOW_MODEL, STREAMER_SUPERVISOR_DECODER_BACKOFF_STEP_S="2.0",
                  STREAMER_SUPERVISOR_MODEL_BACKOFF_STEP_S="4.0", STREAMER_SUPERVISOR_HEARTBEAT_S="0.2")
    try:
        for name in ("decoder", "model-0", "model-1"):
            kill_and_wait(srv, name)
        segmenter = actor(srv, "segmenter")["pid"]
        s = speech(SENTENCES[:3], gap_s=0.8)
        x = s.samples + np.random.default_rng(0).normal(0, 0.003, s.samples.shape).astype(np.float32)

        async def into_the_third_region(messages: list[dict[str, Any]]) -> None:
            """Once the second final is out and the third region has begun (its start, 8.64 s, is
            in the usable checkpoint); the client has not sent the region's end yet."""
            await until(lambda: sum(1 for m in messages if m.get("is_final")) == 2
                        and [m["type"] for m in messages].count("active") == 3)
            for i in range(2):
                os.kill(actor(srv, f"model-{i}")["pid"], signal.SIGKILL)  # back in 4 s
            os.kill(segmenter, signal.SIGSTOP)

        async def past_its_end(_: object) -> None:
            try:
                # The region's end waits in the segmenter's inbox: the decoder has decoded it all.
                await asyncio.to_thread(wait_for, lambda: decoded(srv) >= s.seconds - 0.01, 20)
                replays = srv.log().count("replaying the stream")
                os.kill(actor(srv, "decoder")["pid"], signal.SIGKILL)  # back in 2 s
                await asyncio.to_thread(wait_for, lambda: srv.log().count("replaying the stream") > replays, 10)
            finally:
                os.kill(segmenter, signal.SIGCONT)

        steps = [*at_audio(stream_steps(x[None, :], 16000, False), sum(s.truth[2]) / 2, into_the_third_region),
                 past_its_end]
        t = asyncio.run(converse(srv.ws(), steps, pace_s=0.05))
        assert check_regions_answered(t, 0) == (3, 0)
    finally:
        srv.stop()
