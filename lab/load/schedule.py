"""When each request of an open-loop run is due: a constant rate or a linear ramp. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """`rate` requests/s at t=0 changing linearly to `rate_end` at t=`duration` (rate_end None: constant)."""

    rate: float
    duration: float
    rate_end: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate:g}")
        if self.rate_end is not None and self.rate_end < 0:
            raise ValueError(f"rate_end must be >= 0, got {self.rate_end:g}")
        if self.duration <= 0:
            raise ValueError(f"duration must be > 0, got {self.duration:g}")

    @property
    def end(self) -> float:
        return self.rate if self.rate_end is None else self.rate_end

    @property
    def total(self) -> int:
        """Requests due in [0, duration): the area under the rate line."""
        return int(math.floor((self.rate + self.end) / 2 * self.duration + 1e-9))

    def rate_at(self, t: float) -> float:
        return self.rate + (self.end - self.rate) * min(max(t, 0.0), self.duration) / self.duration

    def due(self, k: int) -> float:
        """Seconds after the start at which request k (0-based) is due: solves N(t) = k for the cumulative count."""
        slope = (self.end - self.rate) / self.duration
        if abs(slope) < 1e-12:
            return k / self.rate
        # N(t) = rate*t + slope*t^2/2; the root that starts at t=0.
        disc = self.rate * self.rate + 2 * slope * k
        return (math.sqrt(max(disc, 0.0)) - self.rate) / slope
