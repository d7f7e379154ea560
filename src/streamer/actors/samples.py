"""A growing window of one channel's 16 kHz samples, addressed by absolute sample index.

Regions can last tens of seconds while audio arrives 20 ms at a time; concatenating on
every chunk would copy the region over and over, so capacity grows geometrically and
the consumed front is dropped in place.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


class SampleWindow:
    def __init__(self, capacity: int = 16000, start: int = 0) -> None:
        self._buf = np.zeros(capacity, np.float32)
        self._len = 0
        self.start = start  # absolute index of self._buf[0]

    @property
    def end(self) -> int:
        """Absolute index one past the newest sample."""
        return self.start + self._len

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        n = samples.shape[0]
        if self._len + n > self._buf.shape[0]:
            grown = np.zeros(max(2 * self._buf.shape[0], self._len + n), np.float32)
            grown[: self._len] = self._buf[: self._len]
            self._buf = grown
        self._buf[self._len : self._len + n] = samples
        self._len += n

    def get(self, start: int, end: int) -> npt.NDArray[np.float32]:
        """A copy of samples [start, end); both must lie inside the window."""
        return self.view(start, end).copy()

    def view(self, start: int, end: int) -> npt.NDArray[np.float32]:
        """Samples [start, end) without a copy: valid only until the next append or discard."""
        if start < self.start or end > self.end or start > end:
            raise IndexError(f"[{start}, {end}) outside window [{self.start}, {self.end})")
        return self._buf[start - self.start : end - self.start]

    def discard_before(self, index: int) -> None:
        """Forget samples before `index` (no-op for what is already gone)."""
        cut = min(max(index - self.start, 0), self._len)
        if cut == 0:
            return
        self._buf[: self._len - cut] = self._buf[cut : self._len]
        self._len -= cut
        self.start += cut
