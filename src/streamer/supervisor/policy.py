"""When to restart a dead child, and when to give up: Erlang/OTP intensity, systemd back-off.

Pure and clock-free: callers pass `now`, so tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamer.runtime.config import RolePolicy


class Escalate(Exception):
    """Past the restart intensity: the supervisor shuts everything down and exits non-zero."""


@dataclass(frozen=True)
class RestartPolicy:
    intensity: int = 10  # at most this many restarts ...
    period_s: float = 60.0  # ... within this window
    backoff_base_s: float = 0.0  # the first restart is immediate
    backoff_step_s: float = 0.1  # then 0.1, 0.2, 0.4 ... for crashes in quick succession
    backoff_max_s: float = 5.0

    hang_timeout_s: float = 10.0  # no heartbeat for this long: killed as hung

    @classmethod
    def from_config(cls, c: RolePolicy) -> RestartPolicy:
        return cls(intensity=c.intensity, period_s=c.period_s, backoff_step_s=c.backoff_step_s,
                   backoff_max_s=c.backoff_max_s, hang_timeout_s=c.hang_timeout_s)

    def next_delay(self, crash_times: list[float], now: float) -> float:
        """Record a crash at `now`; the delay before restarting, or raise `Escalate`."""
        crash_times.append(now)
        del crash_times[: -(self.intensity + 1)]
        recent = [t for t in crash_times if now - t <= self.period_s]
        if len(recent) > self.intensity:
            raise Escalate(f"{len(recent)} crashes within {self.period_s:g} s")
        burst = len(recent) - 1
        if burst <= 0:
            return self.backoff_base_s
        return float(min(self.backoff_step_s * 2 ** (burst - 1), self.backoff_max_s))
