"""The decoder -> segmenter hop in one process: handed over in memory, or packed into the pool.

    python bench/placement.py [--streams 50] [--turns 500]

Both actors run in this process on the same input: every turn each of `--streams` streams
gets one 20 ms frame of 16 kHz s16 from a front (written into the front's real pool, as a
front would). "local" runs them as `[actors] placement = "paired"` does (`actors/host.py`:
the decoder's `Frames` handed to the segmenter as they are). "pool" carries the decoder's
packets to the segmenter as two processes would, minus the socket: packed into the decoder's
pool, encoded, decoded, read out and released. So the difference is what the pool and the codec
cost per frame; the ZeroMQ wake-ups that two processes add on top (one per packet at each end,
110-230 us of CPU each at real-time rates on the 2-core machine) are `bench/wakeup.py`'s.
CPU is `time.process_time()` of the loop, per stream-frame.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from streamer.actors.actor import Env  # noqa: E402
from streamer.actors.decoder import Decoder  # noqa: E402
from streamer.actors.host import build  # noqa: E402
from streamer.actors.segmenter import Segmenter  # noqa: E402
from streamer.runtime import config  # noqa: E402
from streamer.runtime.clock import FakeClock  # noqa: E402
from streamer.runtime.topology import Host, Place, Topology  # noqa: E402
from streamer.transport.link import MemoryLink  # noqa: E402
from streamer.transport.messages import NOWHERE, Open, Pcm  # noqa: E402
from streamer.transport.outbox import pack  # noqa: E402
from streamer.transport.shm import BufferPool  # noqa: E402


def run(mode: str, streams: int, turns: int) -> float:
    cfg = config.load(env={}, overrides={"actors": {"fronts": 1, "models": 1,
                                                    "placement": "paired" if mode == "local" else "split"}})
    topo = Topology(cfg)
    run_id = secrets.token_hex(4)
    pools = {n: BufferPool.create(spec, run_id) for n, spec in topo.pools.items()}
    try:
        wire = MemoryLink()
        clock = FakeClock()
        if mode == "local":
            hosted = build(topo, Host((Place("decoder"), Place("segmenter"))), cfg, wire, pools, clock)

            def turn() -> None:
                hosted.turn(0)
        else:
            seg_wire = MemoryLink()
            dec = Decoder(Env(Place("decoder"), cfg, wire, pools, clock))
            seg = Segmenter(Env(Place("segmenter"), cfg, seg_wire, pools, clock))

            def turn() -> None:
                dec.turn(0)
                seg_wire.inboxes["segmenter"].extend(wire.sent.pop("segmenter", []))
                seg.turn(0)

        rng = np.random.default_rng(0)
        frame = (rng.standard_normal(320) * 300).astype(np.int16).tobytes()  # 20 ms, quiet noise
        ids = [f"s-{k}" for k in range(streams)]
        first = pack(None, [Open(s, 0, "simple", 1, 16000, 16, False, False) for s in ids], [])
        assert first is not None
        wire.inboxes["decoder"].append(first[0])

        def one_turn() -> None:
            packed = pack(pools["front-0"], [Pcm(s, NOWHERE) for s in ids], [(i, frame) for i in range(streams)])
            assert packed is not None
            wire.inboxes["decoder"].append(packed[0])
            turn()
            wire.sent.clear()  # what went to the front and the models: not this hop's business
            if mode != "local":
                seg_wire.sent.clear()

        for _ in range(20):  # warm up
            one_turn()
        t0 = time.process_time()
        for _ in range(turns):
            one_turn()
        return (time.process_time() - t0) / (turns * streams)
    finally:
        for pool in pools.values():
            pool.close()
            pool.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    got: dict[str, list[float]] = {"pool": [], "local": []}
    for _ in range(args.repeat):
        for mode in got:
            got[mode].append(run(mode, args.streams, args.turns))
    best: dict[str, Any] = {m: min(v) for m, v in got.items()}
    for mode, us in best.items():
        print(f"{mode:6s} {1e6 * us:7.2f} us CPU per stream-frame (best of {args.repeat}; decoder + segmenter + hop)")
    print(f"saved  {1e6 * (best['pool'] - best['local']):7.2f} us per stream-frame by the hand-off "
          "(before the wake-ups two processes add)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
