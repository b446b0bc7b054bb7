"""The ELB's CloudWatch metrics for one interval, from each ELB node's HAProxy stats and kernel accounting.

Each metric comes as CloudWatch gives it: `all` (the whole ELB: Sum for counts, Average for Latency),
`by_elb_node` (the ELB node dimension CloudWatch hides behind Min/Max/Average) and `by_az`
(the AvailabilityZone dimension). Counts are per interval; gauges are their value at the interval's end.

    RequestCount             TCP listener: connections made from the ELB to the instances (HAProxy's
                             server connects that did not fail; a client connection no instance took
                             is not counted, one that succeeded on a retry counts once)
    BackendConnectionErrors  backend connect attempts that failed, health checks and retries included
                             (kernel accounting in the ELB node, see lab.metrics.accounting)
    HealthyHostCount /       instances this ELB node sends to / does not (InService / OutOfService)
      UnHealthyHostCount
    Latency                  backend connect time, seconds (HAProxy's average over its last 1,024 connects)
    SurgeQueueLength         connections waiting for an instance right now (HAProxy backend queue)
    SpilloverCount           connections closed without reaching an instance (queue full or timed out,
                             no healthy instance): backend failures not charged to any server
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.haproxy_stats import instance_health, show_stat
from lab.hosts import Host
from lab.metrics.accounting import BackendCounts, ErrorSeries, read_counts
from lab.render.haproxy import HEALTH_BACKEND

METRICS = (
    "RequestCount",
    "BackendConnectionErrors",
    "HealthyHostCount",
    "UnHealthyHostCount",
    "Latency",
    "SurgeQueueLength",
    "SpilloverCount",
)
COUNTS = ("RequestCount", "BackendConnectionErrors", "SpilloverCount")


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key, "")
    return int(value) if value not in ("", None) else 0


@dataclass
class ElbNodeSample:
    """Cumulative counters and current gauges of one ELB node at time t."""

    t: float
    az: str
    backend: dict[str, BackendCounts]  # per instance, from the kernel
    sessions: int = 0  # listener frontends' stot
    traffic_connects: int = 0  # listener backends' server `connect` (attempts to instances)
    traffic_failures: int = 0  # listener backends' server econ + wretr + wredis (failed attempts: each
    # failed connect ends in an error, a retry to the same instance or a redispatch to another)
    backend_failures: int = 0  # listener backends' BACKEND econ (includes failures with no server)
    queued: int = 0  # listener backends' qcur
    connect_ms: float | None = None  # HAProxy ctime of the listener backends (moving average)
    health: dict[str, str] = field(default_factory=dict)  # instance -> InService / OutOfService


def parse_stats(rows: list[dict[str, str]]) -> dict[str, Any]:
    """The listener side of one HAProxy's `show stat` rows, summed. Pure."""
    out: dict[str, Any] = {
        "sessions": 0,
        "traffic_connects": 0,
        "traffic_failures": 0,
        "backend_failures": 0,
        "queued": 0,
    }
    ctimes = []
    for row in rows:
        px, sv = row.get("pxname", ""), row.get("svname", "")
        if px.startswith("listener-") and sv == "FRONTEND":
            out["sessions"] += _int(row, "stot")
        elif px in (HEALTH_BACKEND, "prometheus") or px.startswith("listener-"):
            continue
        elif sv == "BACKEND":
            out["backend_failures"] += _int(row, "econ")
            out["queued"] += _int(row, "qcur")
            if row.get("ctime") not in ("", None) and _int(row, "connect"):
                ctimes.append((_int(row, "connect"), _int(row, "ctime")))
        else:
            out["traffic_connects"] += _int(row, "connect")
            out["traffic_failures"] += _int(row, "econ") + _int(row, "wretr") + _int(row, "wredis")
    if ctimes:
        weight = sum(n for n, _ in ctimes)
        out["connect_ms"] = sum(n * ms for n, ms in ctimes) / weight
    out["health"] = {name: view["state"] for name, view in instance_health(rows).items()}
    return out


class ElbSampler:
    """Samples every ELB node of a lab; installs the kernel accounting on first use (idempotent)."""

    def __init__(self, lab) -> None:
        self.lab = lab
        topo, plan = lab.topology, lab.plan
        self.elbs = {e.name: e for e in topo.elb_nodes}
        self.targets = {e.name: {n.name: str(plan.ip(n.name)) for n in topo.elb_targets(e)} for e in topo.elb_nodes}

    def sample(self, name: str, t: float) -> ElbNodeSample:
        host: Host = self.lab.host(name)
        counts = read_counts(host, self.targets[name])
        stats = parse_stats(show_stat(self.lab.backend.elb_stats_socket(self.lab, name)))
        return ElbNodeSample(t=t, az=self.elbs[name].az, backend=counts, **stats)


def _dims(per_node: dict[str, float], azs: dict[str, str], average: bool = False) -> dict[str, Any]:
    by_az: dict[str, list[float]] = {}
    for node, value in per_node.items():
        by_az.setdefault(azs[node], []).append(value)
    agg = (lambda xs: round(sum(xs) / len(xs), 6) if xs else None) if average else (lambda xs: sum(xs))
    return {
        "all": agg(list(per_node.values())),
        "by_elb_node": dict(per_node),
        "by_az": {az: agg(xs) for az, xs in sorted(by_az.items())},
    }


def elb_interval(
    prev: dict[str, ElbNodeSample], cur: dict[str, ElbNodeSample], series: ErrorSeries | None = None
) -> dict[str, Any]:
    """CloudWatch metrics for the interval between two samples of every ELB node, plus where errors came from.

    `series` carries BackendConnectionErrors from interval to interval (see ErrorSeries); a recorder
    keeps one for the whole run.
    """
    if series is None:
        series = ErrorSeries()
        for name, p in prev.items():
            for inst, counts in p.backend.items():
                series.step((name, inst), counts.failed)
    azs = {n: s.az for n, s in cur.items()}
    requests, errors, spill, healthy, unhealthy, latency, queue = {}, {}, {}, {}, {}, {}, {}
    by_instance: dict[str, dict[str, int]] = {}
    traffic_errors: dict[str, int] = {}
    attempts: dict[str, int] = {}
    refused: dict[str, int] = {}
    for name, c in cur.items():
        p = prev.get(name)
        failed = {}
        for inst, counts in c.backend.items():
            failed[inst] = series.step((name, inst), counts.failed)
        errors[name] = sum(failed.values())
        by_instance[name] = failed
        before = p.backend if p else {}
        attempts[name] = sum(c.backend[i].attempts - before.get(i, BackendCounts()).attempts for i in c.backend)
        refused[name] = sum(c.backend[i].refused - before.get(i, BackendCounts()).refused for i in c.backend)
        made = c.traffic_connects - c.traffic_failures
        requests[name] = max(0, made - ((p.traffic_connects - p.traffic_failures) if p else 0))
        traffic_errors[name] = c.traffic_failures - (p.traffic_failures if p else 0)
        spill[name] = max(
            0, (c.backend_failures - c.traffic_failures) - ((p.backend_failures - p.traffic_failures) if p else 0)
        )
        healthy[name] = sum(1 for s in c.health.values() if s == "InService")
        unhealthy[name] = sum(1 for s in c.health.values() if s != "InService")
        latency[name] = None if c.connect_ms is None else round(c.connect_ms / 1000, 6)
        queue[name] = c.queued
    lat_known = {n: v for n, v in latency.items() if v is not None}
    metrics = {
        "RequestCount": _dims(requests, azs),
        "BackendConnectionErrors": _dims(errors, azs),
        "HealthyHostCount": _dims(healthy, azs),
        "UnHealthyHostCount": _dims(unhealthy, azs),
        "Latency": _dims(lat_known, {n: azs[n] for n in lat_known}, average=True),
        "SurgeQueueLength": _dims(queue, azs),
        "SpilloverCount": _dims(spill, azs),
    }
    total_errors = sum(errors.values())
    traffic = min(total_errors, sum(max(0, v) for v in traffic_errors.values()))
    return {
        "metrics": metrics,
        "backend_connection_errors": {
            "by_elb_node_and_instance": by_instance,
            "attempts": sum(attempts.values()),
            "refused": sum(refused.values()),
            "traffic": traffic,  # HAProxy's failed connects and retries on the listeners
            "health_check": total_errors - traffic,
        },
        "instances": {name: dict(c.health) for name, c in cur.items()},
    }
