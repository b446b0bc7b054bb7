"""Client-side statistics of a load run: outcome counts and HDR histograms (µs), per slice and in total."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

from lab.load.outcomes import OUTCOMES

# 1 µs .. 1 h at 3 significant digits: every timeout the CLI accepts fits; ~190 kB per live histogram.
LOWEST_US, HIGHEST_US, DIGITS = 1, 3_600_000_000, 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
HISTOGRAMS = ("latency", "connect", "rpc", "send_lag")


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record(h: HdrHistogram, seconds: float) -> None:
    h.record_value(min(max(int(seconds * 1e6), LOWEST_US), HIGHEST_US))


def summary(h: HdrHistogram) -> dict[str, Any]:
    """count, min/mean/max and p50/p90/p99/p99.9, in milliseconds.

    The same numbers as hdrh's get_mean_value / get_value_at_percentile, which walk all ~23,500 buckets
    in Python (~30 ms a histogram); this reads only the buckets that hold counts, found with numpy.
    """
    import numpy as np  # here, not at the top: load workers import this module and must start fast

    n = h.get_total_count()
    if n == 0:
        return {"count": 0}
    counts = np.ctypeslib.as_array(h.counts)
    index = np.flatnonzero(counts)
    # hdrh's get_value_from_index, for every used bucket at once: its lowest value and its width.
    bucket = (index >> h.sub_bucket_half_count_magnitude) - 1
    sub = (index & (h.sub_bucket_half_count - 1)) + h.sub_bucket_half_count
    first = bucket < 0
    sub[first] -= h.sub_bucket_half_count
    bucket[first] = 0
    lowest = sub << (bucket + h.unit_magnitude)
    width = np.left_shift(1, bucket + h.unit_magnitude)
    used = counts[index].tolist()
    # Mean over each bucket's middle value, summed in Python integers (exact, as hdrh does).
    total = sum(map(operator.mul, used, (lowest + (width >> 1)).tolist()))
    out: dict[str, Any] = {
        "count": n,
        "min_ms": h.get_min_value() / 1000,
        "mean_ms": round(float(total) / n / 1000, 3),
    }
    cumulative = np.cumsum(used)
    for p in PERCENTILES:
        target = max(int((min(p, 100.0) * n / 100) + 0.5), 1)  # hdrh's get_target_count_at_percentile
        i = int(np.searchsorted(cumulative, target, side="left"))
        out[f"p{p:g}_ms"] = int(lowest[i] + width[i] - 1) / 1000  # the bucket's highest equivalent value
    out["max_ms"] = h.get_max_value() / 1000
    return out


# A dropped SYN is resent after 1 s, then 2 s after that: such calls land just above 1 s or 3 s.
DELAY_BANDS = ((0.0, 1.0), (1.0, 1.5), (1.5, 3.0), (3.0, 3.5), (3.5, None))


def band_label(low: float, high: float | None) -> str:
    return f">= {low:g} s" if high is None else f"[{low:g} s, {high:g} s)"


def slow_calls(counts: dict[str, int]) -> int:
    """Values past the first band (1 s and more): what makes a histogram of bands worth showing."""
    first = band_label(*DELAY_BANDS[0])
    return sum(n for band, n in counts.items() if band != first)


def bands(h: HdrHistogram) -> dict[str, int]:
    """How many values fall in each of DELAY_BANDS (by each HDR bucket's lowest value)."""
    import numpy as np  # here, not at the top: load workers import this module and must start fast

    counts = np.ctypeslib.as_array(h.counts)
    index = np.flatnonzero(counts)
    out = {band_label(lo, hi): 0 for lo, hi in DELAY_BANDS}
    if not len(index):
        return out
    values = [h.get_value_from_index(int(i)) / 1e6 for i in index]
    for value, n in zip(values, counts[index].tolist(), strict=True):
        for lo, hi in DELAY_BANDS:
            if value >= lo and (hi is None or value < hi):
                out[band_label(lo, hi)] += n
                break
    return out


def encode(h: HdrHistogram) -> str:
    return h.encode().decode() if h.get_total_count() else ""


def decode_into(target: HdrHistogram, encoded: str) -> None:
    if encoded:
        target.add(HdrHistogram.decode(encoded.encode()))


class Tally:
    """Slices being added up: outcome counts and live histograms. The one place client slices are merged."""

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.details: dict[str, int] = {}
        self.scheduled = 0
        self.hists: dict[str, HdrHistogram | None] = dict.fromkeys(HISTOGRAMS)

    def add(self, s: ClientSlice) -> None:
        for k, v in s.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        for k, v in s.details.items():
            self.details[k] = self.details.get(k, 0) + v
        self.scheduled += s.scheduled
        for name in HISTOGRAMS:
            if s.histograms.get(name):
                h = self.hists[name]
                if h is None:
                    h = self.hists[name] = new_histogram()
                decode_into(h, s.histograms[name])

    def slice(self, t_start: float, t_end: float) -> ClientSlice:
        """The sum so far as one slice, its summaries computed now from the live histograms (no decoding)."""
        out = ClientSlice(t_start, t_end, dict(self.outcomes), dict(self.details), scheduled=self.scheduled)
        for name, h in self.hists.items():
            out.histograms[name] = encode(h) if h is not None else ""
            out._summaries[name] = (out.histograms[name], summary(h) if h is not None else {"count": 0})
        return out


@dataclass
class ClientSlice:
    """What the client saw in [t_start, t_end) (wall clock, by completion time): outcomes and latencies.

    `latency` runs from each request's scheduled start to its reply (open loop: queueing and stalls
    included); `connect` is the TCP connect time of new connections; `rpc` is send-to-reply on the
    connection; `send_lag` is how late the generator got to each request after its due time (its own lag
    behind the schedule, by due time: lab.metrics.saturation judges it). Histograms travel encoded
    (HdrHistogram's compressed base64 form); each one's summary is computed once and kept with the encoded
    form it belongs to.
    """

    t_start: float
    t_end: float
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    details: dict[str, int] = field(default_factory=dict)
    histograms: dict[str, str] = field(default_factory=lambda: dict.fromkeys(HISTOGRAMS, ""))
    scheduled: int = 0  # requests that became due in this slice (by schedule, not completion)
    _summaries: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def histogram(self, name: str) -> HdrHistogram:
        h = new_histogram()
        decode_into(h, self.histograms.get(name, ""))
        return h

    def summary(self, name: str) -> dict[str, Any]:
        """summary() of one histogram, computed on first use (keyed by its encoded form, so never stale)."""
        encoded = self.histograms.get(name, "")
        cached = self._summaries.get(name)
        if cached is None or cached[0] != encoded:
            cached = self._summaries[name] = (encoded, summary(self.histogram(name)) if encoded else {"count": 0})
        return cached[1]

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
            out[name] = self.summary(name)
        if with_histograms:
            out["hdr"] = dict(self.histograms)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClientSlice:
        """Back from to_dict(with_histograms=True) (or a worker's payload: no times, no summaries)."""
        return cls(
            d.get("t_start", 0.0),
            d.get("t_end", 0.0),
            {**dict.fromkeys(OUTCOMES, 0), **d.get("outcomes", {})},
            dict(d.get("details", {})),
            {**dict.fromkeys(HISTOGRAMS, ""), **d.get("hdr", d.get("histograms", {}))},
            d.get("scheduled", 0),
        )

    @classmethod
    def merged(cls, slices: Iterable[ClientSlice], t_start: float, t_end: float) -> ClientSlice:
        tally = Tally()
        for s in slices:
            tally.add(s)
        return tally.slice(t_start, t_end)
