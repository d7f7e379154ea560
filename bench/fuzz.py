"""Fuzzing at depth (not in CI): many thousand random frame sequences against one live server.

    python bench/fuzz.py --examples 10000

The sequences are `tests/test_fuzz.py`'s (valid, unsupported, truncated, valid-then-garbage,
random-JSON, garbage and oversized frames on both routes), run by hypothesis, with three
well-behaved neighbours streaming beside them the whole time (two on the simple route, one
segmented; which interims reach a client depends on load by design, so none ask for them).
Every fuzzed session must end with a PROTOCOL.md close code, after an `error` when it is not
1000; every neighbour's every stream must be byte for byte what it got alone; the server
must stay healthy and log no traceback and no ERROR line. Prints the count, the run time and
the close codes, and writes `bench/results/fuzz.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_fuzz import FRAME_LIMIT, PROTOCOL_CODES, Oversized, frame  # noqa: E402

from audio import noise, speech  # noqa: E402
from conversation import Transcript, converse, stream_steps  # noqa: E402
from server import Server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class Neighbour:
    """A well-behaved client streaming the same audio again and again; every run must equal the first."""

    def __init__(self, srv: Server, route: str, steps: list[Any]) -> None:
        self.srv, self.route, self.steps = srv, route, steps
        self.alone = self._once()
        self.runs = 0
        self.different: list[Transcript] = []

    def _once(self) -> Transcript:
        return asyncio.run(converse(self.srv.ws(self.route), self.steps, pace_s=0.01))

    def run_until(self, stop: Any) -> None:
        while not stop.is_set():
            t = self._once()
            self.runs += 1
            if t.messages != self.alone.messages or t.close_code != 1000:
                self.different.append(t)


def main() -> int:
    import threading

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10000)
    args = parser.parse_args()
    codes: Counter[int | None] = Counter()
    with tempfile.TemporaryDirectory() as work:
        srv = Server(Path(work) / "run", env={"STREAMER_LIMITS_MAX_FRAME_BYTES": str(FRAME_LIMIT),
                                              "STREAMER_LIMITS_IDLE_TIMEOUT_S": "2",
                                              "STREAMER_SERVER_LOG_LEVEL": "WARNING"}).start()
        try:
            sp = speech(("The quick brown fox jumps over the lazy dog.", "Please call me back tomorrow morning."))
            neighbours = [Neighbour(srv, "simple", stream_steps(noise(3.0)[None, :], 16000, False)),
                          Neighbour(srv, "simple", stream_steps(noise(2.0, rate=44100, seed=1)[None, :], 44100, True)),
                          Neighbour(srv, "segmented", stream_steps(sp.samples[None, :], 16000, False))]
            stop = threading.Event()
            threads = [threading.Thread(target=n.run_until, args=(stop,), daemon=True) for n in neighbours]
            for t in threads:
                t.start()
            began = time.monotonic()

            @settings(max_examples=args.examples, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(st.lists(frame, min_size=1, max_size=8), st.sampled_from(["segmented", "simple"]))
            def one_session(frames: list[Any], route: str) -> None:
                steps: list[Any] = [f.frame() if isinstance(f, Oversized) else f for f in frames]
                steps.append({"request": "stop", "disconnect": True})
                t = asyncio.run(converse(srv.ws(route), steps, timeout=15))
                codes[t.close_code] += 1
                assert t.close_code in PROTOCOL_CODES, (t.close_code, frames, t.messages)
                if t.close_code != 1000:
                    assert t.messages and t.messages[-1]["type"] == "error", (frames, t.messages)

            try:
                one_session()
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            took = time.monotonic() - began
            healthy = srv.health()[0] == 200
            log = srv.log()
        finally:
            srv.stop()
    bad_log = [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]
    runs = sum(n.runs for n in neighbours)
    differ = sum(len(n.different) for n in neighbours)
    text = (f"{sum(codes.values())} fuzzed sessions in {took:.0f} s ({sum(codes.values()) / took:.1f} per s); "
            f"close codes {dict(sorted(codes.items(), key=str))}; {runs} neighbour streams beside them, "
            f"{differ} different from their lone run; server healthy after: {healthy}; "
            f"traceback or ERROR lines in its log: {len(bad_log)}\n")
    print(text, end="")
    for line in bad_log[:20]:
        print("  ", line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.md").write_text(text)
    return 0 if healthy and not differ and not bad_log else 1


if __name__ == "__main__":
    sys.exit(main())
