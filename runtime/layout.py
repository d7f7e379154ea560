"""What a run is made of, so the supervisor and every child agree: the buffer pools."""

from __future__ import annotations

from runtime.config import Config
from transport.shm import PoolSpec


def pool_specs(cfg: Config) -> dict[str, PoolSpec]:
    """Every pool of a run, by the role that produces into it."""
    p = cfg.pools
    return {
        "front": PoolSpec("front", p.front_slot_bytes, p.front_slots),
        "decoder": PoolSpec("decoder", p.decoder_slot_bytes, p.decoder_slots),
        "segmenter": PoolSpec("segmenter", p.segmenter_slot_bytes, p.segmenter_slots),
    }
