"""What the decoder and the region cutter cost per 20 ms frame, by how much audio each call gets.

    python bench/feeds.py [--streams 1,100] [--seconds 30]

The load generator's speech track (16 kHz s16 mono, speech with pauses) through
`PcmDecoder.feed` and `SpeechRegions.feed` (the server's `[segmenter]` rules), fed 1, 2, 5 or 10
frames a call. With several streams each has its own decoder and cutter and they are fed in turn,
a call each, as a server interleaves its sessions: their state no longer stays in the caches.
CPU is `time.process_time()`, best of three, per 20 ms frame. This is every system's own work per
frame after the read (the process peer runs exactly this inline), so it says what batching a
stream's frames could save, before any cost of the pipeline around it. Writes
`bench/results/feeds.md`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import loadgen  # noqa: E402

from streamer.actors.pcm import PcmDecoder  # noqa: E402
from streamer.actors.regions import RegionRules, SpeechRegions  # noqa: E402
from streamer.runtime import config  # noqa: E402

FRAMES_PER_FEED = (1, 2, 5, 10)


def per_frame_us(rules: RegionRules, pcm: bytes, streams: int, frames: int) -> float:
    step = loadgen.FRAME_BYTES * frames
    calls = (len(pcm) // step) * step
    best = float("inf")
    for _ in range(3):
        pairs = [(PcmDecoder(1, loadgen.RATE, 16, False), SpeechRegions(rules, False)) for _ in range(streams)]
        begin = time.process_time()
        for at in range(0, calls, step):
            chunk = pcm[at:at + step]
            for decoder, cutter in pairs:
                cutter.feed(decoder.feed(chunk)[0])
        best = min(best, time.process_time() - begin)
    return 1e6 * best / (streams * calls // loadgen.FRAME_BYTES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,100", help="comma-separated stream counts")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per stream")
    args = parser.parse_args()
    s = config.load().segmenter
    rules = RegionRules(s.vad_aggressiveness, s.min_speech_ms, s.hangover_ms, s.pad_ms, s.max_segment_s,
                        s.interim_interval_s)
    track = loadgen.track()
    want = int(args.seconds * loadgen.RATE) * 2
    pcm = (track * (want // len(track) + 1))[:want]
    counts = [int(n) for n in args.streams.split(",")]
    lines = ["CPU per 20 ms frame of `PcmDecoder.feed` + `SpeechRegions.feed`, by frames per call "
             f"({args.seconds:g} s of speech per stream, best of 3)", "",
             "| streams | " + " | ".join(f"{k} frame{'s' * (k > 1)} a call" for k in FRAMES_PER_FEED) + " |",
             "|---:|" + "---:|" * len(FRAMES_PER_FEED)]
    for n in counts:
        cells = [f"{per_frame_us(rules, pcm, n, k):.1f} µs" for k in FRAMES_PER_FEED]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    out = ROOT / "bench" / "results" / "feeds.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
