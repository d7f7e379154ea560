"""webrtcvad against Silero VAD, with the segmenter's own region rules: boundaries and CPU.

    python bench/vad.py

The same espeak-ng speech with pauses (twelve sentences, 0.6-1.2 s apart), clean and with
white noise added at 20 dB and 10 dB SNR, through `SpeechRegions` with each detector (fed
20 ms at a time, as the segmenter gets it). Against the truth (where each sentence's sound
is, measured on the clean samples): regions found, regions missing or extra, and the mean
and worst distance of the starts and ends; CPU seconds per audio second. Writes
`bench/results/vad.md`.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from streamer.actors.regions import Piece, RegionRules, SpeechRegions  # noqa: E402

from audio import SENTENCES, _say, sound_extent  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MORE = ("Please call me back tomorrow morning.", "The birch canoe slid on the smooth planks.",
        "Glue the sheet to the dark blue background.", "It is easy to tell the depth of a well.")


def track(seed: int = 3) -> tuple[np.ndarray, list[tuple[float, float]]]:
    rng = random.Random(seed)
    parts, truth, pos = [np.zeros(8000, np.float32)], [], 8000
    for text in (SENTENCES + MORE) * 1 + SENTENCES[:4]:
        said = _say(text, 16000)
        lo, hi = sound_extent(said)
        truth.append(((pos + lo) / 16000, (pos + hi) / 16000))
        gap = np.zeros(int(rng.uniform(0.6, 1.2) * 16000), np.float32)
        parts += [said, gap]
        pos += said.shape[0] + gap.shape[0]
    return np.concatenate(parts), truth


def regions(x: np.ndarray, vad: str) -> tuple[list[tuple[float, float]], float]:
    cutter = SpeechRegions(RegionRules(vad=vad), interim=False)
    out = []
    t0 = time.process_time()
    for i in range(0, x.shape[0], 320):
        out += cutter.feed(x[i : i + 320])
    out += cutter.flush()
    cpu = time.process_time() - t0
    return [(p.start / 16000, p.end / 16000) for p in out if isinstance(p, Piece)], cpu / (x.shape[0] / 16000)


def score(found: list[tuple[float, float]], truth: list[tuple[float, float]]) -> dict[str, float]:
    """Each true sentence matched to the found region overlapping it most."""
    starts, ends, missed = [], [], 0
    used: set[int] = set()
    for lo, hi in truth:
        best = max(range(len(found)), key=lambda k: min(hi, found[k][1]) - max(lo, found[k][0]), default=None)
        if best is None or min(hi, found[best][1]) <= max(lo, found[best][0]):
            missed += 1
            continue
        used.add(best)
        starts.append(abs(found[best][0] - lo))
        ends.append(abs(found[best][1] - hi))
    return {"found": len(found), "missed": missed, "extra": len(found) - len(used),
            "start_mean": 1000 * float(np.mean(starts)), "start_max": 1000 * max(starts),
            "end_mean": 1000 * float(np.mean(ends)), "end_max": 1000 * max(ends)}


def main() -> int:
    clean, truth = track()
    power = float(np.mean(clean[clean != 0] ** 2))
    rng = np.random.default_rng(7)
    lines = [f"| audio | VAD | regions (of {len(truth)}) | missed | extra | start error mean / max "
             "| end error mean / max | CPU ms per audio s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, snr in (("clean", None), ("noise, 20 dB SNR", 20.0), ("noise, 10 dB SNR", 10.0)):
        x = clean if snr is None else (clean + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), clean.shape[0])
                                       ).astype(np.float32)
        for vad in ("webrtc", "silero"):
            found, cpu = regions(x, vad)
            s = score(found, truth)
            lines.append(f"| {label} | {vad} | {s['found']} | {s['missed']} | {s['extra']} "
                         f"| {s['start_mean']:.0f} / {s['start_max']:.0f} ms "
                         f"| {s['end_mean']:.0f} / {s['end_max']:.0f} ms | {1000 * cpu:.2f} |")
    text = (f"{len(truth)} espeak-ng sentences, {clean.shape[0] / 16000:.0f} s, through the segmenter's region rules "
            "(20 ms feeds)\n\n" + "\n".join(lines) + "\n")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vad.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
