"""The README's short tables, from the sweeps `bench/load.py` saved.

    python bench/tables.py overhead capacity capacity-interim

`load.py` writes every column it measured (`bench/results/<scenario>.md`); a reader comparing
systems wants five: CPU per stream, latency from the last voiced frame, its bound, whether
the system kept real time, and what it refused or failed. One table per scenario on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def short(rows: list[dict[str, Any]]) -> str:
    lines = ["| streams | system | CPU % of a core per stream | p50 | p99 | bound (p99) | real time | finals "
             "| interims/session | refused | errors |",
             "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["streams"], r["system"] != "ours", r["system"])):
        # Whether the sessions that got in kept real time (load.py's own rule also wants none
        # refused; only the admission scenario refuses, and there the admitted ones are the point).
        ok = r["voiced_p99"] is not None and r["voiced_p99"] <= r["bound_s"] and not r["errors"] \
            and not r["incomplete"]
        p50 = "-" if r["voiced_p50"] is None else f"{r['voiced_p50']:.2f} s"
        p99 = "-" if r["voiced_p99"] is None else f"{r['voiced_p99']:.2f} s"
        lines.append(f"| {r['streams']} | {r['system']} | {r['cpu_per_stream_pct']:.2f} | {p50} | {p99} "
                     f"| {r['bound_s']:.2f} s | {'**yes**' if ok else 'no'} | {r['finals']} "
                     f"| {r['interims_per_session']:.1f} | {r['refused']} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def kept(rows: list[dict[str, Any]]) -> str:
    """The most streams each system kept in real time (every point up to it kept too)."""
    out = []
    for name in dict.fromkeys(r["system"] for r in rows):
        best = 0
        for r in sorted((r for r in rows if r["system"] == name), key=lambda r: r["streams"]):
            if not r["keeps_real_time"]:
                break
            best = r["streams"]
        out.append(f"{name}: {best}")
    return "most streams kept in real time: " + ", ".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+")
    args = parser.parse_args(argv)
    for name in args.scenarios:
        rows = json.loads((RESULTS / f"{name}.json").read_text())
        print(f"### {name}\n\n{short(rows)}\n{kept(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
