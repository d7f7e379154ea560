"""What a group costs with nobody connected: heartbeats, `Ready`s, load reports, timers.

Each variant of ours (`bench/load.py`'s `VARIANTS`) and the process-pool peer is started
fresh with its defaults, left to settle, and its whole process tree's CPU is read by psutil over
a window in which no client connects. The target (issue 18): under 1 % of a core in all.

    python bench/idle.py [--seconds 30] [--systems ours,ours-shards,process]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from load import VARIANTS, CpuWindow, System  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "idle.md"
SETTLE_S = 5.0  # after health: imports done, pools touched, the first reports out


def measure(name: str, seconds: float, workdir: Path) -> dict[str, float]:
    system = System(name, {}, workdir)
    system.start({})
    try:
        begin = time.monotonic() + SETTLE_S
        window = CpuWindow(system, begin, begin + seconds)
        window.join()
        return {role: 100 * cpu / window.wall for role, cpu in window.by_role.items()}
    finally:
        system.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--systems", default=",".join([*VARIANTS, "process"]))
    args = parser.parse_args(argv)
    rows = ["| system | whole group, % of a core | by role |", "|---|---:|---|"]
    with tempfile.TemporaryDirectory() as work:
        for name in args.systems.split(","):
            by_role = measure(name, args.seconds, Path(work))
            roles = ", ".join(f"{r} {v:.3f}" for r, v in sorted(by_role.items(), key=lambda kv: -kv[1]))
            rows.append(f"| {name} | {sum(by_role.values()):.2f} | {roles} |")
            print(rows[-1], flush=True)
    text = f"Idle for {args.seconds:g} s after {SETTLE_S:g} s to settle; no client connected.\n\n" + "\n".join(rows)
    RESULTS.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
