"""A front's time limits as they are configured in production, on virtual time (`virtualtime.py`):
what a session does at 15 s, 30 s or two minutes, checked to the moment, in seconds of real
time (each virtual jump first gives the rig's real sockets a moment: `virtualtime.py`). The rig
(`frontrig.py`) keeps its actors on the loop's clock too.

The same limits at short settings, through a real socket, are in `test_hostile.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import virtualtime

from streamer.front.session import Session

from audio import noise, pcm_bytes
from conversation import Transcript, check_simple_counts, start_msg
from frontrig import FrontRig, MemoryWire, front_rig

T = TypeVar("T")


def on_virtual_time(tmp_path: Path, body: Callable[[FrontRig, float], Awaitable[T]], **overrides: dict[str, Any]) -> T:
    """`body(rig, t0)` on a rig whose loop keeps virtual time, `t0` the loop's time at its start."""
    async def run() -> T:
        async with front_rig(tmp_path, **overrides) as rig:
            return await body(rig, asyncio.get_running_loop().time())

    return virtualtime.run(run())


def live_client_not_reading(rig: FrontRig, seconds: int) -> tuple[Session, MemoryWire, asyncio.Future[None],
                                                                   asyncio.Future[None]]:
    """A session of the simple route whose client streams `seconds` of noise live, in 0.5 s
    frames, and reads nothing until told to (`MemoryWire.read`): the session running, and the
    client talking."""
    session, wire = rig.session("simple", [start_msg(1, 16000, False)])
    wire.reading.clear()
    running = asyncio.ensure_future(rig.run(session))
    talking = asyncio.ensure_future(
        wire.say_paced([pcm_bytes(noise(0.5, seed=i)[None, :], False) for i in range(2 * seconds)], every_s=0.5))
    return session, wire, running, talking


def when(wire: MemoryWire, kind: str, says: str = "") -> float:
    """The loop's time of the first message of `kind` that says `says`."""
    return next(at for m, at in zip(wire.sent, wire.sent_at, strict=True)
                if m["type"] == kind and says in m.get("message", ""))


@pytest.mark.parametrize("with_start", [True, False])
def test_an_idle_session_is_warned_at_half_its_timeout_and_closed_at_it(tmp_path: Path, with_start: bool) -> None:
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float]:
        session, wire = rig.session("segmented", [start_msg(1, 16000, False)] if with_start else [])
        await rig.run(session)
        return wire, asyncio.get_running_loop().time() - t0

    wire, lasted = on_virtual_time(tmp_path, body)  # idle_timeout_s = 30, as shipped
    assert wire.close_code == 1008, wire.sent
    assert when(wire, "warning", "no audio for 15 s") == pytest.approx(wire.sent_at[-1] - 15, abs=0.2)
    assert lasted == pytest.approx(30, abs=0.2)
    assert "idle timeout" in wire.sent[-1]["message"]


def test_a_session_without_its_token_is_closed_at_the_auth_timeout(tmp_path: Path) -> None:
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float]:
        session, wire = rig.session("simple", [], authenticated=False)
        await rig.run(session)
        return wire, asyncio.get_running_loop().time() - t0

    wire, lasted = on_virtual_time(tmp_path, body, security={"token": "secret"})  # auth_timeout_s = 2
    assert wire.close_code == 1008
    assert "no token within 2 s" in wire.sent[-1]["message"]
    assert lasted == pytest.approx(2, abs=0.05)


def test_a_session_at_its_maximum_length_is_warned_then_its_stream_finished_and_closed(tmp_path: Path) -> None:
    """A live client streaming past `max_session_s`: told 10 s before, then its stream is ended
    as a `stop` would end it, every second it sent answered, and the socket closed 1008."""
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float]:
        session, wire = rig.session("simple", [start_msg(1, 16000, False)])
        seconds = [pcm_bytes(noise(1.0, seed=i)[None, :], False) for i in range(200)]
        running = asyncio.ensure_future(rig.run(session))
        talking = asyncio.ensure_future(wire.say_paced(seconds, every_s=1.0))
        await running
        talking.cancel()
        return wire, t0

    wire, t0 = on_virtual_time(tmp_path, body, limits={"max_session_s": 120.0})
    assert wire.close_code == 1008, wire.sent[-3:]
    assert when(wire, "warning", "the session ends in 10 s") == pytest.approx(t0 + 110, abs=0.2)
    assert 120 <= wire.closed_at - t0 < 121  # the last results take what the model takes: next to nothing
    assert "maximum session length 120 s" in wire.reason
    results = [m for m in wire.sent if m["type"] == "segment"]
    answered = sum(m["count"] for m in results)
    assert 119 * 16000 <= answered <= 121 * 16000  # every second sent before the limit, and no more
    check_simple_counts(Transcript(wire.sent, wire.close_code), 0, answered)


def test_a_client_that_reads_nothing_is_closed_at_the_send_timeout(tmp_path: Path) -> None:
    """It is closed 1008 once results have waited `send_timeout_s` for it, and the session ends
    then: its seat is not held while results it will never read wait for it once more."""
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float, float]:
        session, wire, running, talking = live_client_not_reading(rig, seconds=100)
        while session.outbox.qsize() <= 4:  # results pile up from the first chunks on
            await asyncio.sleep(0.01)
        piled = asyncio.get_running_loop().time()
        await running
        talking.cancel()
        return wire, piled, asyncio.get_running_loop().time()

    wire, piled, ended = on_virtual_time(tmp_path, body, limits={"max_outbox": 4})  # send_timeout_s = 30
    assert wire.close_code == 1008
    assert "read no results for 30 s" in wire.reason
    assert wire.closed_at - piled == pytest.approx(30, abs=1.0)
    assert ended - wire.closed_at < 0.1


def test_a_client_that_reads_slowly_is_held_back_not_closed_until_it_reads_nothing(tmp_path: Path) -> None:
    """One result every 10 s keeps results piled past `max_outbox` for a minute: the session
    takes no audio meanwhile (backpressure) but keeps the client; once it reads nothing more, it
    is closed `send_timeout_s` after its last read."""
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float]:
        session, wire, running, talking = live_client_not_reading(rig, seconds=200)
        while session.outbox.qsize() <= 4:
            await asyncio.sleep(0.01)
        for _ in range(6):  # a minute of reading one result every 10 s
            await asyncio.sleep(10)
            had = len(wire.sent)
            wire.read(1)
            while len(wire.sent) == had and not wire.closed:
                await asyncio.sleep(0)
        last_read = asyncio.get_running_loop().time()
        await running
        talking.cancel()
        return wire, last_read

    wire, last_read = on_virtual_time(tmp_path, body, limits={"max_outbox": 4})  # send_timeout_s = 30
    assert len(wire.sent) == 6
    assert wire.close_code == 1008 and "read no results for 30 s" in wire.reason
    assert wire.closed_at - last_read == pytest.approx(30, abs=1.0)


@pytest.mark.timeout(60, method="thread")  # a frozen loop cannot be interrupted from inside
def test_a_held_back_session_still_ends_at_its_maximum_length(tmp_path: Path) -> None:
    """A session held back by its client's slow reading when its length falls due is ended as any
    other: regression, the watchdog spared it as not idle, in a loop that never awaited, and the
    front's event loop (every session on it, its heartbeat) froze there."""
    async def body(rig: FrontRig, t0: float) -> tuple[MemoryWire, float]:
        _, wire, running, talking = live_client_not_reading(rig, seconds=200)
        while not running.done():  # one result every 10 s: held back, never idle, never deaf
            await asyncio.wait({running}, timeout=10)
            wire.read(1)
        talking.cancel()
        return wire, t0

    wire, t0 = on_virtual_time(tmp_path, body, limits={"max_outbox": 4, "max_session_s": 60.0})
    assert wire.close_code == 1008 and "maximum session length 60 s" in wire.reason, wire.reason
    # At 60 s the stream is finished; the slow client gets send_timeout_s (30) to read its results.
    assert 60 <= wire.closed_at - t0 <= 60 + 30 + 2
