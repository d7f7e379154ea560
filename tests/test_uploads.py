"""Ordinary use at full speed and at every limit at once: clients of two libraries uploading as
fast as they can, one of them 8 channels at 8 kHz in 1 MiB frames, one the largest format the
limits allow (192 kHz x 8 channels of float) in 1 MiB frames. Nothing shared may die, every
session ends 1000 and every sample of every channel is counted; a front holds no more per
session than its budgets say. (`bench/uploads.py` runs the same at full size.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psutil
import pytest

from server import Server
from uploads import Upload, all_at_once

MIB = 1 << 20
UPLOADS = [
    *(Upload(seconds=20.0, library=lib) for lib in ("aiohttp", "websockets") * 3),
    Upload(channels=8, rate=8000, seconds=9 * MIB / (8 * 2 * 8000), frame_bytes=MIB),  # nine 1 MiB frames
    Upload(channels=8, rate=192000, is_float=True, seconds=8.0, frame_bytes=MIB, library="websockets"),
]


@pytest.mark.long
def test_uploads_at_full_speed_in_every_format_lose_nothing_and_kill_nothing(tmp_path: Path) -> None:
    srv = Server(tmp_path / "run", env={"STREAMER_ACTORS_FRONTS": "1"}).start()
    try:
        front = psutil.Process(next(a["pid"] for a in srv.actors() if a["role"] == "front"))
        base = front.memory_info().rss
        peak = [base]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], front.memory_info().rss)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            outcomes = asyncio.run(all_at_once(srv.ws("simple"), UPLOADS, timeout=240))
        finally:
            done.set()
            watcher.join()
        for o in outcomes:
            assert o.whole, (o.upload.name, o.close_code, o.counts, o.expected, o.errors[:2], o.failure)
        assert {a["name"]: a["restarts"] for a in srv.actors()} == {a["name"]: 0 for a in srv.actors()}
        limits = 4 * MIB + 16 * MIB  # read-ahead and in-flight bytes, per session
        assert peak[0] - base < len(UPLOADS) * limits, f"the front grew {(peak[0] - base) / MIB:.0f} MiB"
    finally:
        srv.stop()
