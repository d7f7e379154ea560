"""Where and how eagerly the kernel runs each process: model actors may yield to the rest.

On a machine whose cores the model actors can fill, the processes that carry every frame (the
fronts, and the decoders and segmenters or the shards that hold them) are the ones whose delay
every client feels: a model call that waits a few milliseconds longer delays one result, a front
that waits delays every session's reads and pings. `[scheduling]` lets the model actors run at
a lower priority (`model_nice`, added to their niceness), as batch work (`model_batch`:
`SCHED_BATCH`, which the kernel preempts less often and wakes with less favour), and pins model
actor i to core i (`pin`), for caches that stay warm. All off by default: `bench/load.py` measures each before one
becomes a default.
"""

from __future__ import annotations

import logging
import os

from streamer.runtime.config import Config
from streamer.runtime.topology import Place

log = logging.getLogger("scheduling")


def apply(cfg: Config, places: tuple[Place, ...]) -> None:
    """Set this process's priority, policy and cores for the actors it runs (called once, at start)."""
    s = cfg.scheduling
    models = [p for p in places if p.role == "model"]
    try:
        if models and s.model_nice:
            os.nice(s.model_nice)
        if models and s.model_batch:
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        if s.pin:
            cores = sorted(os.sched_getaffinity(0))
            if models:
                os.sched_setaffinity(0, {cores[models[0].index % len(cores)]})
    except OSError as e:  # not allowed here (a container's seccomp policy): run as the kernel likes
        log.warning("scheduling settings not applied: %s", e)
