"""Fuzzing the WebSocket: random sequences of text and binary frames (valid, truncated,
oversized, garbage, valid-then-garbage) against a running server, while a well-behaved
session streams beside them. The server stays up, every session ends with a PROTOCOL.md
close code, and the well-behaved session gets exactly what it gets alone."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audio import noise
from conversation import Transcript, check_simple_counts, converse, stream_steps
from server import Server

FRAME_LIMIT = 65536
PROTOCOL_CODES = {1000, 1003, 1007, 1008, 1009}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Idle 6 s: a fuzzed session that never sends audio still ends soon, and the neighbour, paced
    # at ten times real time, is not warned for a second's pause that a loaded machine can cause.
    srv = Server(tmp_path_factory.mktemp("fuzz"), env={
        "STREAMER_LIMITS_MAX_FRAME_BYTES": str(FRAME_LIMIT), "STREAMER_LIMITS_IDLE_TIMEOUT_S": "6"}).start()
    try:
        yield srv
    finally:
        srv.stop()


class Oversized(int):
    """A binary frame `n` bytes over the limit (built at send time: a short repr on failure)."""

    def frame(self) -> bytes:
        return b"\x00" * (FRAME_LIMIT + self)

    def __repr__(self) -> str:
        return f"Oversized(limit + {int(self)})"


formats = st.fixed_dictionaries({
    "channels": st.integers(-1, 10), "sample_rate": st.sampled_from([0, -1, 8000, 16000, 44100, 10**9]),
    "bit_depth": st.sampled_from([8, 16, 24, 32]), "is_float": st.booleans()})
starts = st.builds(lambda f, i: json.dumps({"request": "start", "format": f, "interim_results": i}),
                   formats, st.booleans())
good_starts = st.builds(lambda ch, rate, fl, i: json.dumps({
    "request": "start", "interim_results": i,
    "format": {"channels": ch, "sample_rate": rate, "bit_depth": 32 if fl else 16, "is_float": fl}}),
    st.integers(1, 3), st.sampled_from([8000, 16000, 44100]), st.booleans(), st.booleans())
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3),
                           max_leaves=6)
frame = st.one_of(
    good_starts, good_starts,                                                 # a stream that works
    starts,                                                                   # valid or unsupported start
    st.builds(lambda s, k: s[:k], starts, st.integers(0, 40)),                # truncated JSON
    st.builds(lambda s, g: s + g, starts, st.text(min_size=1, max_size=10)),  # valid then garbage
    st.text(max_size=60),                                                     # garbage text
    json_values.map(json.dumps),                                              # JSON of any shape
    st.just(json.dumps({"request": "stop", "disconnect": False})),
    st.binary(max_size=3000),                                                 # audio or garbage bytes
    st.integers(1, 64).map(lambda n: Oversized(n)),                          # oversized
)


class Neighbour:
    """A well-behaved session streaming the same audio again and again during the fuzzing."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.steps = stream_steps(noise(3.0)[None, :], 16000, False)
        self.alone = self._once()
        check_simple_counts(self.alone, 0, 48000)
        self.runs: list[Transcript] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _once(self) -> Transcript:
        return asyncio.run(converse(self.srv.ws("simple"), self.steps, pace_s=0.01))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.runs.append(self._once())

    def __enter__(self) -> Neighbour:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_random_frames_never_hurt_the_server_or_a_neighbour(target: Server) -> None:
    outcomes: dict[int | None, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(frame, min_size=1, max_size=8), st.sampled_from(["segmented", "simple"]))
    def one_session(frames: list[Any], route: str) -> None:
        steps: list[Any] = [f.frame() if isinstance(f, Oversized) else f for f in frames]
        steps.append({"request": "stop", "disconnect": True})
        t = asyncio.run(converse(target.ws(route), steps, timeout=15))
        outcomes[t.close_code] = outcomes.get(t.close_code, 0) + 1
        assert t.close_code in PROTOCOL_CODES, (t.close_code, frames, t.messages)
        if t.close_code != 1000:  # the session could not go on: it was told why
            assert t.messages and t.messages[-1]["type"] == "error", (frames, t.messages)

    with Neighbour(target) as neighbour:
        one_session()
    assert target.health()[0] == 200
    assert neighbour.runs, "the neighbour never finished a stream"
    for run in neighbour.runs:
        assert run.messages == neighbour.alone.messages and run.close_code == 1000
    print(f"\nclose codes over the fuzzed sessions: {dict(sorted(outcomes.items(), key=str))}; "
          f"neighbour streams, all identical to the lone run: {len(neighbour.runs)}")
