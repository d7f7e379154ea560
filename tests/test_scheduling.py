"""How the kernel runs the model actors (`[scheduling]`): read back from the real processes."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from server import Server, actor


def test_model_actors_yield_to_the_rest_when_told_and_are_pinned_to_their_cores(tmp_path: Path) -> None:
    told = {"STREAMER_SCHEDULING_MODEL_NICE": "5", "STREAMER_SCHEDULING_MODEL_BATCH": "true",
            "STREAMER_SCHEDULING_PIN": "true", "STREAMER_ACTORS_MODELS": "2"}
    srv = Server(tmp_path / "run", env=told).start()
    try:
        cores = sorted(os.sched_getaffinity(0))
        base = psutil.Process(srv.proc.pid).nice()  # type: ignore[union-attr]
        for i in (0, 1):
            pid = actor(srv, f"model-{i}")["pid"]
            assert psutil.Process(pid).nice() == min(base + 5, 19)  # (a niced CI caps it)
            assert os.sched_getscheduler(pid) == os.SCHED_BATCH
            assert os.sched_getaffinity(pid) == {cores[i % len(cores)]}
        front = actor(srv, "front-0")["pid"]
        assert psutil.Process(front).nice() == base and os.sched_getscheduler(front) == os.SCHED_OTHER
        assert os.sched_getaffinity(front) == set(cores)
    finally:
        srv.stop()


def test_by_default_every_process_runs_as_the_kernel_likes(tmp_path: Path) -> None:
    srv = Server(tmp_path / "run").start()
    try:
        base = psutil.Process(srv.proc.pid).nice()  # type: ignore[union-attr]
        pid = actor(srv, "model-0")["pid"]
        assert psutil.Process(pid).nice() == base and os.sched_getscheduler(pid) == os.SCHED_OTHER
    finally:
        srv.stop()
