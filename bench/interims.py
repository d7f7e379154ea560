"""What interim results cost the model: one long utterance, streamed in real time, with interims.

    python bench/interims.py

An utterance of about 19 s (espeak-ng sentences with no pause as long as the hangover) goes
to a fresh server once per setting, in real time with `interim_results`, and the model
actors' `streamer_stage_audio_seconds_total` says how much audio the model was given:

* segmented route, interims at a fixed 0.5 s interval (`interim_growth` 1: what main did);
* segmented route, growing intervals (`interim_growth` 2, the default);
* sequential route (a stateful model: interims come from feeding only the new audio).

The fake model costs nothing here (constant_factor 0), so only the amount of audio counts.
Writes `bench/results/interims.md`.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from audio import SENTENCES, speech  # noqa: E402
from conversation import converse, stream_steps  # noqa: E402
from server import Server  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def model_audio_s(srv: Server) -> float:
    with urllib.request.urlopen(f"{srv.http}/metrics", timeout=10) as r:
        page = r.read().decode()
    return sum(x.value for fam in text_string_to_metric_families(page) for x in fam.samples
               if x.name == "streamer_stage_audio_seconds_total" and x.labels.get("stage") == "model")


def main() -> int:
    s = speech(SENTENCES * 2, gap_s=0.0)
    steps = stream_steps(s.samples[None, :], 16000, False, interim=True)
    rows = []
    settings = (("segmented, fixed 0.5 s interval", "segmented", {"STREAMER_SEGMENTER_INTERIM_GROWTH": "1"}),
                ("segmented, growing interval (default)", "segmented", {}),
                ("sequential (stateful model)", "sequential", {}))
    for label, route, env in settings:
        with tempfile.TemporaryDirectory() as work:
            srv = Server(Path(work) / "run", env={"STREAMER_MODEL_FAKE_CONSTANT_FACTOR": "0", **env}).start()
            try:
                t = asyncio.run(converse(srv.ws(route), steps, pace_s=0.1, timeout=120))
                heard = model_audio_s(srv)
            finally:
                srv.stop()
        finals = [m for m in t.of_type("segment") if m["is_final"]]
        longest = max((m["end_time"] - m["start_time"] for m in finals), default=0.0)
        interims = sum(1 for m in t.of_type("segment") if m["is_final"] is False)
        rows.append((label, longest, len(finals), interims, heard))
    audio = s.samples.shape[0] / 16000
    lines = ["| setting | longest region | finals | interims | audio the model was given | per second of audio |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {label} | {longest:.1f} s | {n} | {i} | {heard:.1f} s | {heard / audio:.2f}x |"
              for label, longest, n, i, heard in rows]
    text = f"one stream of {audio:.1f} s, real time, interim results asked for\n\n" + "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "interims.md").write_text(text)
    return 0 if np.isfinite(rows[-1][-1]) else 1


if __name__ == "__main__":
    sys.exit(main())
