"""The sequential route: every sample of a stream through one stateful model, in order, and the
model's state carried over the death of any process but the front (results equal an
undisturbed run, exactly, with the fake model's running count)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from audio import noise
from conversation import Action, Transcript, at_audio, converse, stream_steps, until
from server import SPLIT, Server, actor, wait_for

SECONDS = 9.0
FINAL_EVERY = 1.5
ENV = {"STREAMER_MODEL_FAKE_FINAL_EVERY_S": str(FINAL_EVERY), "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.05"}


def finals(t: Transcript) -> list[tuple[float, float, int, int]]:
    return [(m["start_time"], m["end_time"], m["count"], m["total"]) for m in t.of_type("segment") if m["is_final"]]


def expected(seconds: float, every: float, rate: int = 16000) -> list[tuple[float, float, int, int]]:
    out, start, total = [], 0, int(seconds * 16000)
    step = int(every * 16000)
    while start < total:
        end = min(start + step, total)
        out.append((round(start / 16000, 4), round(end / 16000, 4), end - start, end))
        start = end
    return out


def models_holding(srv: Server) -> dict[str, int]:
    """Sequential streams each model actor holds a state for (from its last heartbeat)."""
    return {a["name"]: a.get("held") or 0 for a in srv.actors() if a["role"] == "model"}


@pytest.fixture
def srv(tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    # `@pytest.mark.split`: a test that kills the decoder or the segmenter alone, a process of its
    # own (in a shard it is the front's process, and the stream's client would see it die).
    split = request.node.get_closest_marker("split") is not None
    s = Server(tmp_path / "run", env={**ENV, **SPLIT} if split else ENV).start()
    try:
        yield s
    finally:
        s.stop()


def test_every_sample_goes_through_the_stateful_model_in_order(srv: Server) -> None:
    steps = stream_steps(noise(SECONDS)[None, :], 16000, False, interim=True)
    t = asyncio.run(converse(srv.ws("sequential"), steps, pace_s=0.01))
    assert t.close_code == 1000 and not t.of_type("error")
    assert finals(t) == expected(SECONDS, FINAL_EVERY)
    interims = [m for m in t.of_type("segment") if m["is_final"] is False]
    assert interims and all(m["total"] <= m["end_time"] * 16000 for m in interims)


def test_two_channels_each_keep_their_own_state(srv: Server) -> None:
    x = noise(4.0)[None, :].repeat(2, axis=0)
    t = asyncio.run(converse(srv.ws("sequential"), stream_steps(x, 16000, False)))
    assert t.close_code == 1000
    for ch in (0, 1):
        got = [(m["start_time"], m["end_time"], m["count"], m["total"]) for m in t.of_type("segment", ch)
               if m["is_final"]]
        assert got == expected(4.0, FINAL_EVERY)


@pytest.mark.parametrize("role", ["model", pytest.param("decoder", marks=pytest.mark.split),
                                  pytest.param("segmenter", marks=pytest.mark.split)])
def test_a_death_mid_stream_leaves_the_results_of_an_undisturbed_run(srv: Server, role: str) -> None:
    """The process holding the stream's state (or the audio on its way) is SIGKILLed once the
    client has sent half of the audio: the stream goes on elsewhere from its last checkpoint
    and every final, count and running total is what it would have been."""
    kills: list[str] = []

    async def kill_the_busiest(_: object) -> None:
        def rows() -> list[dict[str, Any]]:
            return [a for a in srv.actors() if a["role"] == role and a["pid"]]

        await until(lambda: any(a.get("processed") for a in rows()))  # its heartbeats show it at work
        busiest = max(rows(), key=lambda a: a.get("processed") or 0)  # the model holding the stream
        os.kill(busiest["pid"], signal.SIGKILL)
        kills.append(busiest["name"])

    steps = at_audio(stream_steps(noise(SECONDS)[None, :], 16000, False), SECONDS / 2, kill_the_busiest)
    t = asyncio.run(converse(srv.ws("sequential"), steps, pace_s=0.05))
    assert kills and t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
    assert finals(t) == expected(SECONDS, FINAL_EVERY)
    wait_for(lambda: actor(srv, kills[0])["restarts"] == 1, 10)


def kill_the_holder(srv: Server, kills: list[tuple[str, int]], answered_to: float | None = None) -> Action:
    """An action for `converse`: SIGKILL the model actor holding the stream's state (by the actors
    table's `held`, which moves at heartbeats), one not killed before: a next one holds it only
    because the one before died. The client sends nothing more until then. With `answered_to`
    (seconds: all the client has sent), only once an interim result reaches that far: the model
    has answered every piece sent, so none of the stream's work is on the actor it kills. And the
    client sends nothing more until another actor holds the stream: until the segmenter hears of
    the death (the supervisor tells it), it hands the stream's next piece to the dead process,
    and that piece counts against the stream as work it had there."""
    def holder() -> dict[str, Any] | None:
        return next((a for a in srv.actors() if a["role"] == "model" and a.get("held") and a["pid"]
                     and (a["name"], a["pid"]) not in kills), None)

    def answered(messages: list[dict[str, Any]]) -> bool:
        assert answered_to is not None
        return any(m["type"] == "segment" and m["end_time"] >= answered_to - 1e-6 for m in messages)

    async def kill(messages: list[dict[str, Any]]) -> None:
        if answered_to is not None:
            await until(lambda: answered(messages), 30)
        await until(lambda: holder() is not None, 30)
        row = holder()
        assert row is not None
        os.kill(row["pid"], signal.SIGKILL)
        kills.append((row["name"], row["pid"]))
        if answered_to is not None:  # and the client sends on once the segmenter knows of the death
            await until(lambda: holder() is not None, 30)

    return kill


def killing_at(steps: list[Any], seconds: list[float], action: Callable[[float], Action]) -> list[Any]:
    """`steps` with `action(at)` once the client has sent each `at` of `seconds` of its audio."""
    for at in sorted(seconds, reverse=True):  # the latest first: an action before one would shift it
        steps = at_audio(steps, at, action(at))
    return steps


def test_the_actor_holding_the_stream_dies_twice_and_the_results_are_an_undisturbed_runs(srv: Server) -> None:
    """Every final, count and running total is what it would have been, and no state is left."""
    kills: list[tuple[str, int]] = []
    steps = killing_at(stream_steps(noise(SECONDS)[None, :], 16000, False), [SECONDS / 3, 2 * SECONDS / 3],
                       lambda _: kill_the_holder(srv, kills))
    t = asyncio.run(converse(srv.ws("sequential"), steps, pace_s=0.05))
    assert len(kills) == 2 and kills[0] != kills[1], kills  # two processes (the slot may be the same, restarted)
    assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
    assert finals(t) == expected(SECONDS, FINAL_EVERY)
    slots = collections.Counter(name for name, _ in kills)
    wait_for(lambda: all(actor(srv, name)["restarts"] == n for name, n in slots.items()), 10)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(models_holding(srv).values()), 5)
    assert not any(models_holding(srv).values())


def test_deaths_of_its_actor_between_its_pieces_do_not_fail_a_stream(tmp_path: Path) -> None:
    """No checkpoint in the whole stream (a final every 30 s) and its actor killed four times,
    each time once it has answered all the client has sent (its interim results say so), so
    the kills find none of the stream's work there: each death moves the stream and none counts
    against it. (Counting every death, the fourth gave the stream up, past `max_attempts`.)
    Killing as soon as the audio was sent, a loaded machine had that audio still on its way to
    the actor, and those deaths count (rightly: it might have been the cause)."""
    seconds = 12.0
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_FAKE_FINAL_EVERY_S": "30",
                                        "STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0.01"}).start()
    try:
        kills: list[tuple[str, int]] = []
        steps = killing_at(stream_steps(noise(seconds)[None, :], 16000, False, interim=True), [2.0, 4.5, 7.0, 9.5],
                           lambda at: kill_the_holder(srv, kills, answered_to=at))
        t = asyncio.run(converse(srv.ws("sequential"), steps, pace_s=0.1))
        assert len(kills) == 4, kills
        assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
        assert finals(t) == expected(seconds, 30.0)
    finally:
        srv.stop()


COMMANDS = "#JSGF V1.0;\ngrammar c;\npublic <c> = <verb> the <thing>;\n<verb> = open | close | start | stop;\n" \
    "<thing> = door | window | music;\n"


@pytest.mark.parametrize("grammar", [COMMANDS, ""], ids=["grammar", "free"])
def test_pocketsphinx_transcribes_a_stream_utterance_by_utterance(tmp_path: Path, grammar: str) -> None:
    """The real recognizer on the sequential route: one final per utterance (it finds them
    itself), partial hypotheses as it decodes, word times in the stream's time. With a grammar
    the espeak-ng commands come back word for word; free decoding of espeak-ng's voice is poor
    (see bench/README.md), so only its shape is checked."""
    from audio import speech

    said = ("open the door", "stop the music", "close the window")
    s = speech(said, gap_s=1.0)
    srv = Server(tmp_path / "run", env={"STREAMER_MODEL_NAME": "pocketsphinx", "STREAMER_ACTORS_MODELS": "1",
                                        "STREAMER_MODEL_POCKETSPHINX_GRAMMAR": grammar}).start()
    try:
        t = asyncio.run(converse(srv.ws("sequential"), stream_steps(s.samples[None, :], 16000, False, interim=True),
                                 timeout=120))
        assert t.close_code == 1000 and not t.of_type("error")
        done = [m for m in t.of_type("segment") if m["is_final"]]
        assert len(done) == 3, [m["text"] for m in done]
        for m, (lo, hi) in zip(done, s.truth, strict=True):
            assert m["start_time"] <= lo + 0.05 and m["end_time"] >= hi, (m, lo, hi)
            assert all(m["start_time"] - 0.05 <= w["start"] < w["end"] <= m["end_time"] + 0.05 for w in m["words"])
        if grammar:
            assert [m["text"] for m in done] == list(said)
        else:
            assert all(m["text"] for m in done)
    finally:
        srv.stop()


@pytest.mark.split
def test_a_segmenter_death_leaves_no_model_state_behind(srv: Server) -> None:
    """Four streams, two on each model actor; the segmenter is SIGKILLed while all four are held.
    Its successor rebinds each replayed stream wherever it likes, so the actor that held one
    before must be told to let go of what it holds: once the streams end, no state is left on
    either actor (each would be a whole decoder with pocketsphinx), and their results are
    those of an undisturbed run."""
    streams = 4
    models = {a["name"]: a["pid"] for a in srv.actors() if a["role"] == "model"}
    killed: list[int] = []

    async def kill_once_all_are_held(_: object) -> None:
        # Every stream, half sent, waits here: the first to see all four held kills the segmenter.
        await until(lambda: bool(killed) or sum(models_holding(srv).values()) == streams, 30)
        if not killed:
            pid = actor(srv, "segmenter")["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    steps = at_audio(stream_steps(noise(SECONDS)[None, :], 16000, False), SECONDS / 2, kill_once_all_are_held)

    async def run() -> list[Transcript]:
        return list(await asyncio.gather(*(converse(srv.ws("sequential"), steps, pace_s=0.05)
                                           for _ in range(streams))))

    transcripts = asyncio.run(run())
    assert killed, "the streams ended before all four were held"
    for t in transcripts:
        assert t.close_code == 1000 and not t.of_type("error"), t.messages[-3:]
        assert finals(t) == expected(SECONDS, FINAL_EVERY)
    wait_for(lambda: actor(srv, "segmenter")["pid"] not in (None, killed[0]), 10)
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not any(models_holding(srv).values()), 5)  # the next heartbeats
    assert models_holding(srv) == dict.fromkeys(models, 0)
    assert {a["name"]: a["pid"] for a in srv.actors() if a["role"] == "model"} == models  # the same processes
