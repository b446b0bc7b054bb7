"""Prometheus text exposition (format 0.0.4) of one recorded interval. Pure."""

from __future__ import annotations

import re
from typing import Any

from lab.metrics.elb import COUNTS, METRICS


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.replace("UnHealthy", "Unhealthy")).lower()


def _labels(**labels: str) -> str:
    inner = ",".join(
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"' for k, v in labels.items()
    )
    return "{" + inner + "}" if inner else ""


def to_prometheus(header: dict[str, Any], record: dict[str, Any]) -> str:
    """Gauges for the interval's values (counts are per interval, like CloudWatch periods), labelled by lab."""
    lab = header.get("lab", "")
    azs = {e["name"]: e["az"] for e in header.get("elb_nodes", [])}
    out: list[str] = []

    def family(name: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")

    for metric in METRICS:
        values = record["elb"]["metrics"][metric]
        name = f"lab_elb_{_snake(metric)}"
        unit = "in the interval" if metric in COUNTS else "at the interval's end"
        family(name, f"CloudWatch {metric} {unit} (interval {header.get('interval_s')} s)")
        for node, value in values["by_elb_node"].items():
            if value is not None:
                out.append(f"{name}{_labels(lab=lab, elb_node=node, az=azs.get(node, ''))} {value}")
    family("lab_elb_backend_connection_errors_by_instance", "Failed backend connects per ELB node and instance")
    for node, per in record["elb"]["backend_connection_errors"]["by_elb_node_and_instance"].items():
        for inst, value in per.items():
            out.append(
                f"lab_elb_backend_connection_errors_by_instance{_labels(lab=lab, elb_node=node, instance=inst)} {value}"
            )
    nodes = record.get("nodes", {})
    if nodes:
        family("lab_node_conntrack_entries", "nf_conntrack_count of the node's namespace")
        for node, m in nodes.items():
            out.append(f"lab_node_conntrack_entries{_labels(lab=lab, node=node)} {m['conntrack']['count']}")
        family("lab_node_conntrack_max", "nf_conntrack_max")
        for node, m in nodes.items():
            out.append(f"lab_node_conntrack_max{_labels(lab=lab, node=node)} {m['conntrack']['max']}")
        family("lab_node_conntrack_stat", "conntrack -S counter increase in the interval")
        for node, m in nodes.items():
            for k, v in m["conntrack_stats"].items():
                out.append(f"lab_node_conntrack_stat{_labels(lab=lab, node=node, counter=k)} {v}")
        family("lab_node_tcp", "nstat TCP counter increase in the interval")
        for node, m in nodes.items():
            for k, v in m["tcp"].items():
                out.append(f"lab_node_tcp{_labels(lab=lab, node=node, counter=k)} {v}")
        family("lab_node_kube_chain_packets", "Packets through KUBE-* chains in the interval")
        for node, m in nodes.items():
            for chain, v in m["kube_chains"].items():
                out.append(f"lab_node_kube_chain_packets{_labels(lab=lab, node=node, chain=chain)} {v}")
    client = record.get("client")
    if client:
        family("lab_client_requests", "Client requests completed in the interval, by outcome")
        for outcome, v in client["outcomes"].items():
            out.append(f"lab_client_requests{_labels(lab=lab, outcome=outcome)} {v}")
        family("lab_client_latency_seconds", "Client latency (from the scheduled start) in the interval")
        for key, v in client["latency"].items():
            if key.startswith("p") and key.endswith("_ms"):
                q = float(key[1:-3]) / 100
                out.append(f"lab_client_latency_seconds{_labels(lab=lab, quantile=f'{q:g}')} {v / 1000}")
    return "\n".join(out) + "\n"
