"""`[limits] max_sessions` for the whole group, whichever front the kernel hands a connection.

SO_REUSEPORT spreads connections over the fronts by a hash, not evenly, so a share per front
would refuse a client while another front has room (and two connections can land on one
front of two). Instead every front keeps its count of open sessions in a small file of the
run directory, one counter per front, each written only by its own front. Taking a seat
reads the sum and adds one under an exclusive `flock`, so two fronts admitting at once
cannot both take the last seat. The lock is held for a few microseconds, once per
handshake, never on the audio path.

Admission by load counts the same seats (`front/admission.py`): `take` asks it, under the
same lock, with the number of sessions open over every front, so its count is as exact as
the limit's.

A front that dies leaves its count behind; its replacement zeroes it when it starts (its
sessions died with it), so the seats come back within the restart's back-off.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Callable
from pathlib import Path

SEATS_FILE = "seats"
_WORD = 8


class Seats:
    def __init__(self, run_dir: str, index: int, fronts: int, limit: int) -> None:
        self.index = index
        self.limit = limit
        size = _WORD * max(1, fronts)
        self._fd = os.open(Path(run_dir, SEATS_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size)
            self._counts = memoryview(self._map).cast("q")
            self._counts[index] = 0  # whatever a previous front of this index held died with it
        self.mine = 0

    def _locked(self) -> _Flock:
        return _Flock(self._fd)

    def taken(self) -> int:
        return sum(self._counts)

    def take(self, admits: Callable[[int], bool] = lambda _: True) -> Seat | None:
        """One seat for a new session, if `admits` lets it in beside the sessions open over every
        front and the group has one free. `admits` is asked under the lock, so no other front
        takes a seat between its answer and ours."""
        with self._locked():
            taken = sum(self._counts)
            if not admits(taken) or taken >= self.limit:
                return None
            self.mine += 1
            self._counts[self.index] = self.mine
        return Seat(self)

    def give_back(self) -> None:
        with self._locked():
            self.mine = max(0, self.mine - 1)
            self._counts[self.index] = self.mine

    def close(self) -> None:
        self._counts.release()
        self._map.close()
        os.close(self._fd)


class Seat:
    """One taken seat: given back once, by `release` or on leaving its `with` block."""

    def __init__(self, seats: Seats) -> None:
        self._seats: Seats | None = seats

    def release(self) -> None:
        if self._seats is not None:
            self._seats.give_back()
            self._seats = None

    def __enter__(self) -> Seat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Flock:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
