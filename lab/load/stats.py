"""Client-side statistics of a load run: outcome counts and HDR histograms (µs), per slice and in total."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from lab.load.outcomes import OUTCOMES

# 1 µs .. 1 h at 3 significant digits: every timeout the CLI accepts fits; ~150 kB per live histogram.
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
HISTOGRAMS = ("latency", "connect", "rpc", "send_lag")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record(h: HdrHistogram, seconds: float) -> None:
    h.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


def summary(h: HdrHistogram) -> dict[str, Any]:
    """count, min/mean/max and p50/p90/p99/p99.9, in milliseconds."""
    n = h.get_total_count()
    if n == 0:
        return {"count": 0}
    out: dict[str, Any] = {
        "count": n,
        "min_ms": h.get_min_value() / 1000,
        "mean_ms": round(h.get_mean_value() / 1000, 3),
    }
    for p in PERCENTILES:
        out[f"p{p:g}_ms"] = h.get_value_at_percentile(p) / 1000
    out["max_ms"] = h.get_max_value() / 1000
    return out


def encode(h: HdrHistogram) -> str:
    return h.encode().decode() if h.get_total_count() else ""


def decode_into(target: HdrHistogram, encoded: str) -> None:
    if encoded:
        target.add(HdrHistogram.decode(encoded.encode()))


@dataclass
class ClientSlice:
    """What the client saw in [t_start, t_end) (wall clock, by completion time): outcomes and latencies.

    `latency` runs from each request's scheduled start to its reply (open loop: queueing and stalls
    included); `connect` is the TCP connect time of new connections; `rpc` is send-to-reply on the
    connection; `send_lag` is how late the generator got to each request after its due time (its own lag
    behind the schedule, by due time: lab.metrics.saturation judges it). Histograms travel encoded
    (HdrHistogram's compressed base64 form).
    """

    t_start: float
    t_end: float
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    details: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, str] = field(default_factory=lambda: dict.fromkeys(HISTOGRAMS, ""))
    scheduled: int = 0  # requests that became due in this slice (by schedule, not completion)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def merge(self, other: ClientSlice) -> None:
        self.t_start = min(self.t_start, other.t_start)
        self.t_end = max(self.t_end, other.t_end)
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        for k, v in other.details.items():
            self.details[k] = self.details.get(k, 0) + v
        self.scheduled += other.scheduled
        for name in HISTOGRAMS:
            if other.histograms.get(name):
                h = self.histogram(name)
                decode_into(h, other.histograms[name])
                self.histograms[name] = encode(h)

    def histogram(self, name: str) -> HdrHistogram:
        h = new_histogram()
        decode_into(h, self.histograms.get(name, ""))
        return h

    def to_dict(self, with_histograms: bool = False) -> dict[str, Any]:
        span = max(self.t_end - self.t_start, 1e-9)
        out: dict[str, Any] = {
            "t_start": round(self.t_start, 3),
            "t_end": round(self.t_end, 3),
            "requests": self.requests,
            "rate": round(self.requests / span, 1),
            "scheduled": self.scheduled,
            "outcomes": dict(self.outcomes),
            "details": dict(self.details),
        }
        for name in HISTOGRAMS:
            out[name] = summary(self.histogram(name))
        if with_histograms:
            out["hdr"] = dict(self.histograms)
        return out

    @classmethod
    def merged(cls, slices: list[ClientSlice], t_start: float, t_end: float) -> ClientSlice:
        out = cls(t_start, t_end)
        for s in slices:
            out.merge(s)
        out.t_start, out.t_end = t_start, t_end
        return out
