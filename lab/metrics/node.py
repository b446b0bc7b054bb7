"""Node metrics for one interval: conntrack fill and stats, TCP counters, KUBE-* chain packets (via lab.toolbox)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab import toolbox
from lab.hosts import Host

NODE_CONNTRACK_STATS = ("found", "insert_failed", "drop", "early_drop", "invalid")
NODE_TCP = toolbox.TCP_COUNTERS  # every TCP counter the toolbox names an SRE's first read (one list)


@dataclass
class NodeSample:
    t: float
    conntrack_count: int
    conntrack_max: int
    conntrack_stats: dict[str, int]
    tcp: dict[str, int]
    chains: dict[str, int] = field(default_factory=dict)  # "table/chain" -> packets (cumulative)
    reserved: int = 0  # filler entries emulating a smaller table (conntrack-exhaustion mode=ceiling)


def sample_node(host: Host, t: float, reserved: int = 0) -> NodeSample:
    fill = toolbox.conntrack_fill(host)
    stats = toolbox.conntrack_stats(host)
    tcp = toolbox.nstat(host, NODE_TCP)
    chains = {
        f"{table}/{chain}": n for (table, chain), n in toolbox.chain_packets(toolbox.iptables_counters(host)).items()
    }
    return NodeSample(t, fill["count"], fill["max"], stats, tcp, chains, reserved)


def node_interval(prev: NodeSample | None, cur: NodeSample) -> dict[str, Any]:
    """Gauges at the interval's end and counter increases over it. Pure."""

    def delta(now: dict[str, int], before: dict[str, int] | None, keys) -> dict[str, int]:
        before = before or {}
        return {k: now.get(k, 0) - before.get(k, 0) for k in keys}

    chain_delta = {k: v - (prev.chains.get(k, 0) if prev else 0) for k, v in cur.chains.items()}
    # A table emulated smaller by filler entries: count and max are the traffic's, so an empty emulated
    # table reads 0, not 261,994 / 262,144 = 0.9994 (which printed as a full one).
    count = max(0, cur.conntrack_count - cur.reserved)
    size = max(0, cur.conntrack_max - cur.reserved)
    conntrack = {"count": count, "max": size, "fill": round(min(1.0, count / size), 6) if size else 0.0}
    if cur.reserved:
        conntrack["reserved"] = cur.reserved
    return {
        "conntrack": conntrack,
        "conntrack_stats": delta(cur.conntrack_stats, prev.conntrack_stats if prev else None, NODE_CONNTRACK_STATS),
        "tcp": delta(cur.tcp, prev.tcp if prev else None, NODE_TCP),
        "kube_chains": {k: v for k, v in sorted(chain_delta.items()) if v},
    }
