"""The metrics a scenario can reason about, and their statistics over one phase of a recorded run. Pure.

Three kinds:
- counters, summed over the ELB nodes / nodes per interval (stat: per_minute (default), sum);
- gauges, one value per interval (stat: mean (default), max, min, last);
- phase values, from the phase's load result, exact over the whole phase (stat: value).

Per-minute figures are per *ELB* minute: with a time scale F the ELB's timers run 1/F times faster, so a
phase of D wall seconds is D/F ELB seconds. Kernel timers are not scaled (see the report's note).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.load.outcomes import OUTCOMES
from lab.load.stats import band_label, bands, decode_into, new_histogram
from lab.metrics.node import NODE_CONNTRACK_STATS, NODE_TCP

Interval = dict[str, Any]
Extract = Callable[[Interval], float | None]

ELB_COUNTERS = ("RequestCount", "BackendConnectionErrors", "SpilloverCount")
ELB_GAUGES = ("HealthyHostCount", "UnHealthyHostCount", "Latency", "SurgeQueueLength")
PERCENTILES = ("p50", "p90", "p99", "max")
# Shares of a phase's calls whose latency sits where one or two SYN retransmits put it.
DELAY_SHARES = {"client.latency_1s_share": (1.0, 1.5), "client.latency_3s_share": (3.0, 3.5)}


def _elb(name: str) -> Extract:
    return lambda r: (r.get("elb") or {}).get("metrics", {}).get(name, {}).get("all")


def _bce(part: str) -> Extract:
    return lambda r: (r.get("elb") or {}).get("backend_connection_errors", {}).get(part)


def _client_outcome(outcome: str | None) -> Extract:
    def get(r: Interval) -> float | None:
        c = r.get("client")
        if not c:
            return 0
        return c.get("requests", 0) if outcome is None else c.get("outcomes", {}).get(outcome, 0)

    return get


def _node_sum(section: str, key: str) -> Extract:
    return lambda r: sum((n.get(section) or {}).get(key, 0) for n in (r.get("nodes") or {}).values())


def _node_max(key: str) -> Extract:
    def get(r: Interval) -> float | None:
        values = [n["conntrack"][key] for n in (r.get("nodes") or {}).values() if n.get("conntrack")]
        return max(values) if values else None

    return get


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge | phase
    help: str
    extract: Extract | None = None  # counters and gauges: from one interval record

    @property
    def default_stat(self) -> str:
        return {"counter": "per_minute", "gauge": "mean", "phase": "value"}[self.kind]

    @property
    def stats(self) -> tuple[str, ...]:
        return {"counter": ("per_minute", "sum"), "gauge": ("mean", "max", "min", "last"), "phase": ("value",)}[
            self.kind
        ]


def _catalog() -> dict[str, Metric]:
    out: dict[str, Metric] = {}

    def add(m: Metric) -> None:
        out[m.name] = m

    for name in ELB_COUNTERS:
        add(Metric(f"elb.{name}", "counter", f"CloudWatch {name}, Sum over the ELB nodes", _elb(name)))
    for name in ELB_GAUGES:
        add(Metric(f"elb.{name}", "gauge", f"CloudWatch {name} (all ELB nodes)", _elb(name)))
    add(
        Metric(
            "elb.BackendConnectionErrors.health_check", "counter", "failed health-check connects", _bce("health_check")
        )
    )
    add(Metric("elb.BackendConnectionErrors.traffic", "counter", "failed connects of client traffic", _bce("traffic")))
    add(Metric("client.requests", "counter", "requests the client completed", _client_outcome(None)))
    for outcome in OUTCOMES:
        add(Metric(f"client.{outcome}", "counter", f"client requests that ended '{outcome}'", _client_outcome(outcome)))
    for key in NODE_CONNTRACK_STATS:
        add(
            Metric(
                f"node.conntrack.{key}", "counter", f"conntrack -S {key}, all nodes", _node_sum("conntrack_stats", key)
            )
        )
    for key in NODE_TCP:
        add(Metric(f"node.{key}", "counter", f"nstat {key}, all nodes", _node_sum("tcp", key)))
    add(Metric("node.conntrack.fill", "gauge", "fullest node's conntrack count / max", _node_max("fill")))
    add(Metric("node.conntrack.count", "gauge", "fullest node's conntrack entries", _node_max("count")))
    add(Metric("client.ok_ratio", "phase", "ok / requests over the phase"))
    add(Metric("client.error_ratio", "phase", "1 - ok_ratio over the phase"))
    add(Metric("client.timeout_ratio", "phase", "(connect-timeout + read-timeout) / requests over the phase"))
    add(Metric("client.achieved_rate", "phase", "completed requests per second over the phase"))
    for hist in ("latency", "connect"):
        for p in PERCENTILES:
            add(Metric(f"client.{hist}_{p}_ms", "phase", f"client {hist} {p} over the phase (ms, HDR)"))
    for name, (low, high) in DELAY_SHARES.items():
        what = f"share of the phase's calls with latency in [{low:g} s, {high:g} s) (SYN retransmits)"
        add(Metric(name, "phase", what))
    return out


CATALOG = _catalog()


def describe_unknown(name: str) -> str:
    close = [m for m in CATALOG if name.split(".")[-1].lower() in m.lower()][:5]
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `lab scenario metrics`"
    return f"unknown metric '{name}'{hint}"


def phase_value(load: dict[str, Any] | None, name: str) -> float | None:
    """A phase metric from the phase's load result (lab.load.LoadResult.to_dict())."""
    if not load or not load.get("requests"):
        return None
    requests = load["requests"]
    outcomes = load.get("outcomes", {})
    if name == "client.ok_ratio":
        return load["ok_ratio"]
    if name == "client.error_ratio":
        return 1 - load["ok_ratio"]
    if name == "client.timeout_ratio":
        return (outcomes.get("connect-timeout", 0) + outcomes.get("read-timeout", 0)) / requests
    if name == "client.achieved_rate":
        return load.get("achieved_rate")
    if name in DELAY_SHARES:
        counts = latency_bands(load)
        return counts[band_label(*DELAY_SHARES[name])] / requests if counts is not None else None
    hist, p = name[len("client.") : -len("_ms")].split("_")
    summary = load.get("histograms_ms", {}).get(hist, {})
    key = "max_ms" if p == "max" else f"{p}_ms"
    return summary.get(key)


def latency_bands(load: dict[str, Any] | None) -> dict[str, int] | None:
    """The phase's call latencies counted in the SYN-retransmit bands (lab.load.stats.DELAY_BANDS)."""
    if (load or {}).get("latency_bands") is not None:
        return load["latency_bands"]  # type: ignore[index]
    encoded = (load or {}).get("hdr", {}).get("latency")
    if not encoded:
        return None
    h = new_histogram()
    decode_into(h, encoded)
    return bands(h)


def statistic(
    metric: Metric,
    stat: str,
    intervals: list[Interval],
    t_start: float,
    t_end: float,
    time_scale: float = 1.0,
    load: dict[str, Any] | None = None,
) -> float | None:
    """`stat` of `metric` over the phase [t_start, t_end): None when the run holds no data for it."""
    if metric.kind == "phase":
        return phase_value(load, metric.name)
    # Intervals wholly inside the phase: one straddling a boundary mixes two phases (a fault applied at
    # the start of the next one would show up in this one). Fall back to midpoints for very short phases.
    inside = [r for r in intervals if r["t_start"] >= t_start - 0.05 and r["t_end"] <= t_end + 0.05]
    if not inside:
        inside = [r for r in intervals if t_start <= (r["t_start"] + r["t_end"]) / 2 < t_end]
    values = [v for v in (metric.extract(r) for r in inside) if v is not None]  # type: ignore[misc]
    if not values:
        return None
    if metric.kind == "counter":
        total = float(sum(values))
        if stat == "sum":
            return total
        covered = sum(r["t_end"] - r["t_start"] for r in inside)
        elb_minutes = covered / time_scale / 60
        return total / elb_minutes if elb_minutes > 0 else None
    if stat == "max":
        return float(max(values))
    if stat == "min":
        return float(min(values))
    if stat == "last":
        return float(values[-1])
    return float(sum(values) / len(values))
