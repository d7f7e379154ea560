"""Shared-memory buffer pools: audio is written once and travels as a `BufferRef`.

Ownership, written down because every process relies on it:

* One pool per producing role (front, decoder, segmenter). The supervisor creates and
  unlinks the segments; only that pool's producer ever *allocates* in it.
* A slot is free when its allocation id in the header is 0. The producer stamps a fresh,
  never reused allocation id (kept in the header, so a restarted producer goes on counting)
  before writing the bytes; the `BufferRef` carries that id.
* Whoever finishes with the bytes *releases* them by writing 0 back, but only while the id
  still matches. The one-writer-per-transition rule (producer: 0 -> id, holder: id -> 0)
  needs no lock.
* A reader checks the id before and after it copies; a mismatch means the ref is stale
  (its slots were reclaimed and reused after a crash) and raises `StaleBuffer` instead of
  handing out someone else's audio.
* A full pool answers `alloc` with None (and `write` with `PoolFull`): the producer waits
  (backpressure), nothing is overwritten.
* A reader checks every slot of the ref, and a release frees only the slots that still carry
  its id, so a stale ref can neither read nor free a newer allocation that overlaps it.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from multiprocessing import shared_memory

import msgspec
import numpy as np
import numpy.typing as npt

Payload = bytes | memoryview | npt.NDArray[np.generic]

_MAGIC = 0x5354524D42554631  # "STRMBUF1"
_HEADER_WORDS = 8  # magic, next_alloc, nslots, slot_size, reserved...
_PAGE = 4096


class PoolFull(Exception):
    """No run of free slots is large enough right now; retry after a release."""


class StaleBuffer(Exception):
    """The ref's slots were reclaimed and possibly reused: its bytes are gone."""


class BufferRef(msgspec.Struct, array_like=True, frozen=True):
    """Where some bytes live: small enough to send in every message."""

    pool: str
    slot: int
    nslots: int
    alloc: int
    nbytes: int


@dataclass(frozen=True)
class PoolSpec:
    """Shape of one pool; the supervisor and every attaching process agree on it."""

    name: str
    slot_size: int
    nslots: int

    @property
    def data_offset(self) -> int:
        header = (_HEADER_WORDS + self.nslots) * 8
        return -(-header // _PAGE) * _PAGE

    @property
    def capacity(self) -> int:
        """Bytes of audio the pool holds when empty."""
        return self.slot_size * self.nslots

    @property
    def total_size(self) -> int:
        return self.data_offset + self.capacity

    def segment_name(self, run_id: str) -> str:
        return f"{run_prefix(run_id)}{self.name}"


def run_prefix(run_id: str) -> str:
    """What every segment of one run's pools is named with."""
    return f"streamer-{run_id}-"


def unlink_run(run_id: str, path: str = "/dev/shm") -> None:
    """Unlink whatever is left of run `run_id`'s pools. The supervisor does so on its way out,
    and its resource tracker if it dies; this is for when both died at once (a SIGKILL to their
    process group: honcho's, 5 s after its SIGTERM), and only the children, which leave that
    group as they start, are left to do it."""
    for name in os.listdir(path):
        if name.startswith(run_prefix(run_id)):
            try:
                os.unlink(os.path.join(path, name))
            except OSError:
                pass  # another child was first, or not a segment (the run dir, where TMPDIR is /dev/shm)


def ensure_room(specs: list[PoolSpec], path: str = "/dev/shm") -> None:
    """Refuse to start when tmpfs cannot hold the pools: a short tmpfs SIGBUSes on first touch."""
    needed = sum(s.total_size for s in specs)
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise RuntimeError(
            f"{path} has {free / 2**20:.1f} MiB free, the buffer pools need {needed / 2**20:.1f} MiB; "
            "lower [pools] sizes or enlarge the tmpfs"
        )


class BufferPool:
    """One attached pool. Create with `create` (supervisor) or `attach` (everyone else)."""

    def __init__(self, spec: PoolSpec, shm: shared_memory.SharedMemory) -> None:
        self.spec = spec
        self._shm = shm
        buf = shm.buf
        assert buf is not None
        ids_end = (_HEADER_WORDS + spec.nslots) * 8
        # The hot paths (one slot checked, stamped or freed per hop) index plain memoryviews: a
        # numpy scalar read or write costs several times more than the work it stands for.
        # numpy views of the same bytes serve the rare scans (a free run, a reclaim).
        self._hdr = buf[: _HEADER_WORDS * 8].cast("Q")
        self._idv = buf[_HEADER_WORDS * 8 : ids_end].cast("Q")
        self._ids: npt.NDArray[np.uint64] = np.ndarray((spec.nslots,), np.uint64, buf, _HEADER_WORDS * 8)
        self._data: npt.NDArray[np.uint8] = np.ndarray(
            (spec.nslots * spec.slot_size,), np.uint8, buf, spec.data_offset
        )
        self._bytes = buf[spec.data_offset : spec.data_offset + spec.nslots * spec.slot_size]
        self._cursor = 0
        self._closed = False
        # Left to the garbage collector at interpreter exit, the views outlive the mapping
        # and SharedMemory.__del__ prints a BufferError per pool: close in order instead.
        atexit.register(self.close)

    @classmethod
    def create(cls, spec: PoolSpec, run_id: str) -> BufferPool:
        shm = shared_memory.SharedMemory(spec.segment_name(run_id), create=True, size=spec.total_size)
        fd = getattr(shm, "_fd", -1)
        if fd >= 0:
            # Reserve the tmpfs pages now so a full /dev/shm fails here, not as a SIGBUS later.
            os.posix_fallocate(fd, 0, spec.total_size)
        pool = cls(spec, shm)
        for i, word in enumerate((_MAGIC, 1, spec.nslots, spec.slot_size)):
            pool._hdr[i] = word
        pool._ids[:] = 0
        return pool

    @classmethod
    def attach(cls, spec: PoolSpec, run_id: str) -> BufferPool:
        shm = shared_memory.SharedMemory(spec.segment_name(run_id), create=False)
        pool = cls(spec, shm)
        if pool._hdr[0] != _MAGIC or pool._hdr[2] != spec.nslots:
            pool.close()
            raise RuntimeError(f"segment {spec.segment_name(run_id)} is not a pool of this shape")
        return pool

    @property
    def capacity(self) -> int:
        return self.spec.capacity

    # -- producer side -------------------------------------------------------------

    def alloc(self, nbytes: int) -> tuple[BufferRef, memoryview] | None:
        """Take free slots for `nbytes` and return the ref and a writable view of them, or None
        while the pool is full (the caller waits: backpressure, never an overwrite)."""
        k = max(1, -(-nbytes // self.spec.slot_size))
        if k > self.spec.nslots:
            raise ValueError(f"{nbytes} bytes can never fit pool {self.spec.name!r}")
        slot = self._find_free(k)
        if slot < 0:
            return None
        alloc = self._hdr[1]
        self._hdr[1] = alloc + 1
        idv = self._idv
        for i in range(slot, slot + k):
            idv[i] = alloc
        self._cursor = (slot + k) % self.spec.nslots
        start = slot * self.spec.slot_size
        return BufferRef(self.spec.name, slot, k, alloc, nbytes), self._bytes[start : start + nbytes]

    def write_many(self, payloads: list[Payload]) -> tuple[BufferRef, list[int]] | None:
        """Copy every payload into one allocation, each at an 8-byte aligned offset; the ref and
        the offsets, or None while the pool is full. One allocation per batch of items is what
        keeps a hop's cost per message, not per item."""
        raws = [memoryview(np.ascontiguousarray(p) if isinstance(p, np.ndarray) else p).cast("B")  # type: ignore[arg-type]
                for p in payloads]
        offsets = []
        total = 0
        for raw in raws:
            at = -(-total // 8) * 8
            offsets.append(at)
            total = at + raw.nbytes
        got = self.alloc(max(total, 1))
        if got is None:
            return None
        ref, view = got
        for raw, at in zip(raws, offsets, strict=True):
            view[at : at + raw.nbytes] = raw
        return ref, offsets

    def write(self, payload: Payload) -> BufferRef:
        """Copy one payload into free slots and return its ref; raises `PoolFull`."""
        got = self.write_many([payload])
        if got is None:
            raise PoolFull(self.spec.name)
        ref, _ = got
        return ref

    def _find_free(self, k: int) -> int:
        """The first slot of a free run of `k` at or after the cursor (wrapping), -1 if none."""
        n = self.spec.nslots
        c = self._cursor
        idv = self._idv
        if c + k <= n and not any(idv[i] for i in range(c, c + k)):
            return c
        free = self._ids == 0
        if k == 1:
            idx = np.flatnonzero(free)
        else:
            runs = np.lib.stride_tricks.sliding_window_view(free, k).all(axis=1)
            idx = np.flatnonzero(runs)
        if idx.size == 0:
            return -1
        after = idx[idx >= c]
        return int(after[0] if after.size else idx[0])

    def reclaim(self, below_alloc: int | None = None) -> int:
        """Free every slot (or those allocated before `below_alloc`): after a holder died."""
        mask = self._ids != 0
        if below_alloc is not None:
            mask &= self._ids < below_alloc
        count = int(mask.sum())
        self._ids[mask] = 0
        return count

    @property
    def next_alloc(self) -> int:
        return int(self._hdr[1])

    # -- holder side ---------------------------------------------------------------

    def _check(self, ref: BufferRef) -> None:
        idv, alloc = self._idv, ref.alloc
        end = ref.slot + ref.nslots
        if end > len(idv) or any(idv[i] != alloc for i in range(ref.slot, end)):
            raise StaleBuffer(f"{ref.pool}:{ref.slot} alloc {ref.alloc} was reclaimed")

    def read_bytes(self, ref: BufferRef) -> bytes:
        """A private copy of the bytes (checked before and after the copy)."""
        self._check(ref)
        start = ref.slot * self.spec.slot_size
        data = bytes(self._bytes[start : start + ref.nbytes])
        self._check(ref)
        return data

    def read_array(self, ref: BufferRef, dtype: type[np.generic], shape: tuple[int, ...]) -> npt.NDArray[np.generic]:
        """A private copy of an array; the pool can be released right after."""
        self._check(ref)
        start = ref.slot * self.spec.slot_size
        arr = self._data[start : start + ref.nbytes].view(dtype).reshape(shape).copy()
        self._check(ref)
        return arr

    def release(self, ref: BufferRef) -> bool:
        """Give the slots back; False when they were already reclaimed (nothing to do).

        Only slots still stamped with this allocation's id are freed: after a reclaim, a
        stale ref's range may overlap newer allocations, which keep their slots."""
        idv, alloc = self._idv, ref.alloc
        freed = False
        for i in range(ref.slot, min(ref.slot + ref.nslots, len(idv))):
            if idv[i] == alloc:
                idv[i] = 0
                freed = True
        return freed

    # -- accounting ----------------------------------------------------------------

    def used_slots(self) -> int:
        return int(np.count_nonzero(self._ids))

    def close(self) -> None:
        # SharedMemory.close() raises BufferError while views are alive: drop ours first.
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for view in (self._bytes, self._hdr, self._idv):
            view.release()
        del self._hdr, self._idv, self._ids, self._data, self._bytes
        try:
            self._shm.close()
        except BufferError:
            pass

    def unlink(self) -> None:
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass
