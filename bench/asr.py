"""pocketsphinx as the built-in recognizer: real-time factor, memory, streams per actor, word error rate.

    python bench/asr.py

In this process, no server: the model actor's own code (`actors.models.sphinx`) on espeak-ng
speech. Reports, per mode (free: the bundled en-US language model; grammar: a JSGF command
grammar):

* word error rate over espeak-ng renderings of the phrases (substitutions, deletions and
  insertions over reference words), one utterance per call as the segmented route does, and
  over the same audio fed as one stream in 100 ms pieces as the sequential route does;
* CPU seconds per audio second (real-time factor) of both;
* RSS of a process with the model loaded, and what each further concurrent utterance
  (a decoder from the pool) adds.

Streams per actor follow: a core decodes 1 / RTF seconds of speech per second; with speech
taking a fraction of a stream, that many more streams. Writes `bench/results/asr.md`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from streamer.actors.models.base import Final  # noqa: E402
from streamer.actors.models.sphinx import Pocketsphinx  # noqa: E402

from audio import _say  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SENTENCES = (
    "the quick brown fox jumps over the lazy dog", "please call me back tomorrow morning",
    "every region gets exactly one final result", "the birch canoe slid on the smooth planks",
    "glue the sheet to the dark blue background", "it is easy to tell the depth of a well",
    "these days a chicken leg is a rare dish", "rice is often served in round bowls",
    "the juice of lemons makes fine punch", "the box was thrown beside the parked truck",
)
VERBS, THINGS = ("open", "close", "start", "stop"), ("door", "window", "music")
COMMANDS = tuple(f"{v} the {t}" for v in VERBS for t in THINGS)
GRAMMAR = ("#JSGF V1.0;\ngrammar c;\npublic <c> = <verb> the <thing>;\n"
           f"<verb> = {' | '.join(VERBS)};\n<thing> = {' | '.join(THINGS)};\n")


def errors(ref: str, hyp: str) -> int:
    """Word-level edit distance."""
    r, h = ref.split(), hyp.split()
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[0], i
        for j, hw in enumerate(h, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (rw != hw))
    return d[len(h)]


def measure(model: Pocketsphinx, phrases: tuple[str, ...]) -> dict[str, float]:
    clips = [_say(p, 16000) for p in phrases]
    audio_s = sum(c.shape[0] for c in clips) / 16000
    words = sum(len(p.split()) for p in phrases)
    t0 = time.process_time()
    said = [model.process(c, True)["text"] for c in clips]
    per_utt = time.process_time() - t0
    gap = np.zeros(16000, np.float32)  # a second of silence between phrases, one stream
    stream = np.concatenate([x for c in clips for x in (c, gap)])
    state = model.open()
    t0 = time.process_time()
    finals = [s for i in range(0, stream.shape[0], 1600) for s in model.feed(state, stream[i : i + 1600], i)]
    finals += model.close(state, stream.shape[0])
    streamed = time.process_time() - t0
    texts = [s.output["text"] for s in finals if isinstance(s, Final)]
    return {"wer": sum(errors(p, s) for p, s in zip(phrases, said, strict=True)) / words,
            "stream_wer": errors(" ".join(phrases), " ".join(texts)) / words,
            "utterances": len(texts), "rtf": per_utt / audio_s, "stream_rtf": streamed / (stream.shape[0] / 16000),
            "audio_s": audio_s}


def main() -> int:
    me = psutil.Process()
    base = me.memory_info().rss
    free = Pocketsphinx()
    loaded = me.memory_info().rss
    grammar = Pocketsphinx(grammar=GRAMMAR)
    pool = [free._take() for _ in range(4)]  # four more concurrent utterances
    per_decoder = (me.memory_info().rss - loaded) / 4
    for d in pool:
        free._give(d)
    rows = [("free (en-US language model)", "sentences", measure(free, SENTENCES)),
            ("free (en-US language model)", "commands", measure(free, COMMANDS)),
            ("grammar (JSGF)", "commands", measure(grammar, COMMANDS))]
    lines = ["| mode | phrases | WER per utterance | WER as one stream | utterances found | CPU s per audio s "
             "(per utterance / stream) | speech a core keeps up with |", "|---|---|---:|---:|---:|---:|---:|"]
    for mode, what, m in rows:
        n = len(SENTENCES if what == "sentences" else COMMANDS)
        lines.append(f"| {mode} | {n} {what} | {100 * m['wer']:.0f} % | {100 * m['stream_wer']:.0f} % "
                     f"| {m['utterances']:.0f} of {n} | {m['rtf']:.2f} / {m['stream_rtf']:.2f} "
                     f"| {1 / max(m['stream_rtf'], 1e-9):.1f} s per s |")
    text = (f"pocketsphinx {_version()} on espeak-ng speech, {os.cpu_count()} cores: a model actor with the "
            f"model loaded: {loaded / 2**20:.0f} MiB RSS ({(loaded - base) / 2**20:.0f} MiB for the model); each "
            f"further concurrent utterance (a decoder): {per_decoder / 2**20:.0f} MiB\n\n" + "\n".join(lines) + "\n")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "asr.md").write_text(text)
    return 0


def _version() -> str:
    from importlib.metadata import version

    return version("pocketsphinx")


if __name__ == "__main__":
    sys.exit(main())
