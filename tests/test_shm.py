"""Buffer pools: ownership, backpressure, staleness, and real sharing across processes."""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import stat
from collections.abc import Iterator

import numpy as np
import pytest

from streamer.transport.shm import BufferPool, BufferRef, PoolFull, PoolSpec, StaleBuffer, ensure_room, unlink_run

SPEC = PoolSpec("t", slot_size=1024, nslots=16)


@pytest.fixture
def pool() -> Iterator[tuple[BufferPool, str]]:
    run_id = secrets.token_hex(4)
    p = BufferPool.create(SPEC, run_id)
    try:
        yield p, run_id
    finally:
        p.close()
        p.unlink()


def test_write_read_release_roundtrip(pool: tuple[BufferPool, str]) -> None:
    p, _ = pool
    ref = p.write(b"hello")
    assert p.read_bytes(ref) == b"hello"
    assert p.used_slots() == 1
    assert p.release(ref)
    assert p.used_slots() == 0
    assert not p.release(ref)  # a second release is a no-op, not a corruption


def test_large_payload_spans_contiguous_slots(pool: tuple[BufferPool, str]) -> None:
    p, _ = pool
    arr = np.arange(1000, dtype=np.float32)  # 4000 bytes -> 4 slots
    ref = p.write(arr)
    assert ref.nslots == 4
    np.testing.assert_array_equal(p.read_array(ref, np.float32, (1000,)), arr)


def test_full_pool_refuses_instead_of_overwriting(pool: tuple[BufferPool, str]) -> None:
    p, _ = pool
    refs = [p.write(bytes([i]) * 1024) for i in range(16)]
    with pytest.raises(PoolFull):
        p.write(b"x")
    p.release(refs[3])
    again = p.write(b"y" * 10)
    assert again.slot == refs[3].slot
    assert [p.read_bytes(r)[0] for r in refs if r is not refs[3]] == [i for i in range(16) if i != 3]


def test_fragmented_pool_needs_a_contiguous_run(pool: tuple[BufferPool, str]) -> None:
    p, _ = pool
    refs = [p.write(b"a" * 1024) for _ in range(16)]
    for r in refs[::2]:
        p.release(r)  # 8 free slots, none adjacent
    with pytest.raises(PoolFull):
        p.write(b"b" * 2048)
    p.write(b"c" * 1024)


def test_reclaimed_ref_is_stale_not_garbage(pool: tuple[BufferPool, str]) -> None:
    p, _ = pool
    old = p.write(b"old audio")
    assert p.reclaim() == 1  # e.g. its holder died
    fresh = [p.write(b"new audio") for _ in range(SPEC.nslots)]  # every slot reused
    new = next(r for r in fresh if r.slot == old.slot)
    assert new.alloc != old.alloc
    with pytest.raises(StaleBuffer):
        p.read_bytes(old)
    assert not p.release(old)  # a stale release must not free the new owner's slot
    assert p.read_bytes(new) == b"new audio"


def test_allocation_ids_continue_across_producer_restarts(pool: tuple[BufferPool, str]) -> None:
    p, run_id = pool
    first = p.write(b"x")
    again = BufferPool.attach(SPEC, run_id)  # a restarted producer attaches the same segment
    try:
        assert again.write(b"y").alloc > first.alloc
    finally:
        again.close()


def _child_reads(spec: PoolSpec, run_id: str, ref: BufferRef, q: mp.Queue) -> None:  # type: ignore[type-arg]
    pool = BufferPool.attach(spec, run_id)
    q.put(pool.read_bytes(ref))
    pool.release(ref)
    pool.close()


def test_another_process_reads_and_releases(pool: tuple[BufferPool, str]) -> None:
    p, run_id = pool
    ref = p.write(b"across processes")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(SPEC, run_id, ref, q))
    child.start()
    assert q.get(timeout=30) == b"across processes"
    child.join(30)
    assert child.exitcode == 0
    assert p.used_slots() == 0  # the holder released it


def test_segment_is_private_to_the_user(pool: tuple[BufferPool, str]) -> None:
    _, run_id = pool
    mode = os.stat(f"/dev/shm/{SPEC.segment_name(run_id)}").st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_refuses_to_start_when_tmpfs_is_too_small() -> None:
    huge = PoolSpec("huge", slot_size=1 << 30, nslots=1 << 16)
    with pytest.raises(RuntimeError, match="MiB free"):
        ensure_room([huge])


def test_a_stale_ref_over_several_slots_neither_reads_nor_frees_a_newer_overlapping_one(
        pool: tuple[BufferPool, str]) -> None:
    """Regression: only the first slot's id was checked, so a stale release could free the tail
    of a newer allocation, which then held another stream's audio while passing both checks."""
    p, _ = pool
    old = p.write(b"o" * 3000)  # slots 0..2
    p.reclaim()
    head = p.write(b"h" * 1024)  # slot 3 (the cursor moved on)...
    p.release(head)
    fresh = [p.write(b"n" * 1024) for _ in range(SPEC.nslots)]  # ...every slot reused, one each
    tail = next(r for r in fresh if r.slot == old.slot + 2)
    with pytest.raises(StaleBuffer):
        p.read_bytes(old)
    assert not p.release(old)
    assert p.read_bytes(tail) == b"n" * 1024  # still taken, still its own


def test_unlink_run_takes_its_runs_segments_and_nothing_else() -> None:
    """What a child does when its supervisor died together with the resource tracker. Regression:
    a directory with the run's prefix (the run directory, when TMPDIR is /dev/shm) made it raise,
    and the child skipped its exit and lived on without a supervisor."""
    run_id, other = secrets.token_hex(4), secrets.token_hex(4)
    ours = BufferPool.create(PoolSpec("front-0", 4096, 1), run_id)
    theirs = BufferPool.create(PoolSpec("front-0", 4096, 1), other)
    run_dir = f"/dev/shm/streamer-{run_id}-rundir"
    os.mkdir(run_dir)
    try:
        unlink_run(run_id)
        assert not os.path.exists(f"/dev/shm/{PoolSpec('front-0', 4096, 1).segment_name(run_id)}")
        assert os.path.exists(f"/dev/shm/{PoolSpec('front-0', 4096, 1).segment_name(other)}")
        assert os.path.isdir(run_dir)
    finally:
        os.rmdir(run_dir)
        for p in (ours, theirs):
            p.close()
            p.unlink()
