"""Where the pipeline's CPU goes: py-spy on every process of ours under the real-time load.

    python bench/profile.py --streams 50 --seconds 20 [--set STREAMER_FRONT_COALESCE_MS=0]

Starts ours fresh, streams `--streams` real-time sessions of speech (bench/loadgen.py), and
while they stream records each process (front, decoder, segmenter, one model) with
`py-spy record --format raw` (needs root or ptrace rights; `pip install py-spy`; NATIVE=1 adds
C frames, and with them the time spent waiting). Prints, per
process, the functions with the most samples on top of the stack (own time) and the ones
most often anywhere on it (inclusive time), and keeps the collapsed stacks under
`bench/results/profile/` for a flame graph (`flamegraph.pl`, speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402
import loadgen  # noqa: E402

OUT = ROOT / "bench" / "results" / "profile"


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"  {total} samples"]
    lines += ["  own:"] + [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["  inclusive:"] + [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--system", default="ours", help="ours, or a peer: process, thread")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        system = load.System(args.system, {**load.NULL_MODEL}, Path(work))
        system.start(dict(kv.split("=", 1) for kv in args.set))
        try:
            recorders = []
            begin = time.monotonic() + 4.0
            duration = max(2, int(args.seconds - 6))

            def record() -> None:
                time.sleep(max(0.0, begin - time.monotonic()))
                seen: set[str] = set()
                for p in system.tree():
                    role = load.role_of(p)
                    if role in seen or role == "tracker":
                        continue
                    seen.add(role)
                    mode = ["--native"] if os.environ.get("NATIVE") else ["--nonblocking"]  # native: idle too
                    recorders.append((role, subprocess.Popen(
                        [spy, "record", "--pid", str(p.pid), "--duration", str(duration), "--rate", "200",
                         "--format", "raw", *mode, "--output", str(OUT / f"{role}.txt")],
                        stdout=subprocess.DEVNULL, stderr=open(OUT / f"{role}.err", "wb"))))

            import threading

            t = threading.Thread(target=record, daemon=True)
            t.start()
            asyncio.run(loadgen.run(system.url(), args.streams, args.seconds))
            t.join()
            for _, r in recorders:
                r.wait(60)
        finally:
            system.stop()
    for role, _ in recorders:
        path = OUT / f"{role}.txt"
        if path.exists():
            print(f"== {role}\n{summarize(path, args.top)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
