"""The config of one ELB node's health checker (lab/runtime/elbcheck.py), as JSON text. Pure.

The Classic ELB checks each instance from each ELB node every `interval`, whatever the last check's outcome;
the checker does exactly that. Checks are staggered: an ELB node's instances are spread over the interval,
and the ELB nodes' checks of one instance are spread between them, so an instance sees them one at a time.
"""

from __future__ import annotations

import json
from typing import Any

from lab.models.topology import ElbNodeSpec, Topology
from lab.render.plan import NetworkPlan

AGENT_PORT = 8406  # the checker answers HAProxy's agent check here, on the ELB namespace's loopback only


def agent_interval(topo: Topology, time_scale: float = 1.0) -> float:
    """How often HAProxy asks the checker (loopback only): a tenth of the check interval, at most 1 s, so a
    state change reaches the listeners well within one check interval."""
    return max(0.1, min(1.0, topo.elb.health_check.interval * time_scale / 10))


def checker_config(topo: Topology, plan: NetworkPlan, elb: ElbNodeSpec, time_scale: float = 1.0) -> dict[str, Any]:
    hc = topo.elb.health_check
    interval = hc.interval * time_scale
    targets = topo.elb_targets(elb)
    elbs = [e.name for e in topo.elb_nodes]
    slots = max(1, len(targets) * len(elbs))
    mine = elbs.index(elb.name)
    return {
        "elb": elb.name,
        "interval_s": round(interval, 6),
        "timeout_s": round(hc.timeout * time_scale, 6),
        "healthy_threshold": hc.healthy_threshold,
        "unhealthy_threshold": hc.unhealthy_threshold,
        "agent_port": AGENT_PORT,
        "targets": [
            {
                "instance": node.name,
                "ip": str(plan.ip(node.name)),
                "port": topo.health_check_port,
                "offset_s": round(interval * (i * len(elbs) + mine) / slots, 6),
            }
            for i, node in enumerate(targets)
        ],
    }


def render_checker(topo: Topology, plan: NetworkPlan, elb: ElbNodeSpec, time_scale: float = 1.0) -> str:
    return json.dumps(checker_config(topo, plan, elb, time_scale), indent=2) + "\n"


def with_port(text: str, instances: list[str], port: int) -> str:
    """The same config with the check of `instances` moved to `port` (the healthcheck-misroute fault)."""
    cfg = json.loads(text)
    for target in cfg["targets"]:
        if target["instance"] in instances:
            target["port"] = port
    return json.dumps(cfg, indent=2) + "\n"
