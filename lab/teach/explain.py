"""`lab explain`: the static walk-through of a topology (ELB listeners, health check, each node's KUBE-* rules). Pure.

The rules are the ones the lab renders for kube-proxy (lab.render.kubeproxy), read back rule by rule in the
order the kernel evaluates them for a connection arriving from outside the cluster (from an ELB node): the
NodePort entry in KUBE-SERVICES, the service's KUBE-NODEPORTS rules, then every chain they jump to. Rules
that cannot match such a connection (pod-only or node-local sources) are shown, marked, and not followed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from lab.errors import InputError
from lab.models.topology import Topology
from lab.render.kubeproxy import NODEPORTS_LAST_COMMENT, describe_rule, health_check_node_port, render_node
from lab.render.plan import NetworkPlan, build_plan

# What each flavour and each policy means, in the lab's own words (facts from DOMAIN.md).
FLAVOURS = {
    "legacy": [
        "kube-proxy 1.5 era. KUBE-NODEPORTS marks every NodePort connection for masquerade (KUBE-MARK-MASQ) and "
        "jumps straight to the service's KUBE-SVC-<hash> chain; with externalTrafficPolicy Local it jumps to "
        "KUBE-XLB-<hash> instead, which keeps only this node's pods or marks the packet for KUBE-FIREWALL to drop.",
        "There is no rule dropping conntrack-INVALID packets: an out-of-window packet (e.g. a late retransmission) "
        "is not un-NATed and reaches the pod with the node's address, and the pod answers with a RST that "
        "resets the real connection ('connection reset by peer', kubernetes#74839).",
        "MASQUERADE has no --random-fully: two connections SNATed at the same instant can pick the same source "
        "port; the loser's conntrack insert fails (`conntrack -S` insert_failed) and its SYN is retried ~1 s later.",
    ],
    "modern": [
        "kube-proxy 1.28 era. KUBE-NODEPORTS jumps to KUBE-EXT-<hash>, which marks for masquerade and continues to "
        "KUBE-SVC-<hash> (all endpoints); with externalTrafficPolicy Local, KUBE-EXT sends outside traffic to "
        "KUBE-SVL-<hash> (this node's endpoints only). KUBE-SERVICES ends with the jump to KUBE-NODEPORTS for "
        "any address of the node.",
        "filter KUBE-FORWARD drops conntrack-INVALID packets (added by kubernetes PR #74840; skipped when "
        "nf_conntrack_tcp_be_liberal=1), so late out-of-window packets no longer cause resets.",
        "MASQUERADE uses --random-fully (random source ports, avoiding the NAT insert race), and the masquerade "
        "mark is cleared once used. A Local service without a pod on this node is dropped in filter "
        "KUBE-EXTERNAL-SERVICES, and a health-check NodePort answers /healthz for the load balancer.",
    ],
}
POLICIES = {
    "Cluster": [
        "Any node takes the connection and picks among ALL the service's pods at random, maybe a pod on another "
        "node or in another AZ (one more hop, and cross-AZ traffic).",
        "The node SNATs (masquerades) the connection to its own address, so the pod's reply comes back through it "
        "and conntrack can undo the DNAT; the pod never sees who really connected. A forwarded connection "
        "holds a conntrack entry on BOTH nodes.",
        "Every node passes the ELB's health check as long as any pod of the checked service is up anywhere.",
    ],
    "Local": [
        "A node sends the connection only to the service's pods on that same node: no second hop and no SNAT, "
        "so the pod sees the real source (here the ELB node's address: the ELB is itself a proxy).",
        "A node with no such pod drops the connection. The load balancer must stop sending there: Kubernetes' "
        "AWS provider switches the health check to HTTP:<healthCheckNodePort>/healthz for this; with a plain TCP "
        "check on the NodePort (what this lab's ELB does) the check fails on those nodes and they go OutOfService.",
    ],
}
NOTES = {
    # comment / match -> why the rule does not concern a connection from outside
    "Redirect pods trying to reach": "only for pods inside the cluster",
    "pod traffic for": "only for pods inside the cluster",
    "LOCAL traffic for": "only for connections made by the node itself",
}


@dataclass
class Step:
    table: str
    chain: str
    rule: str
    meaning: str
    depth: int
    applies: bool = True  # can match a connection from outside the cluster
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "chain": self.chain,
            "rule": self.rule,
            "meaning": self.meaning,
            "depth": self.depth,
            "applies": self.applies,
            "note": self.note,
        }


@dataclass
class NodePath:
    node: str
    az: str
    steps: list[Step] = field(default_factory=list)
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # pod, ip:port, node, az, share
    masquerade: bool = False
    dropped: str = ""  # why a connection is dropped here ("" when it is not)
    summary: str = ""

    def signature(self) -> tuple:
        """Nodes with the same rules and outcome are shown once."""
        return tuple((s.table, s.chain, s.rule, s.depth) for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "az": self.az,
            "summary": self.summary,
            "endpoints": self.endpoints,
            "masquerade": self.masquerade,
            "dropped": self.dropped,
            "steps": [s.to_json() for s in self.steps],
        }


def _parse(text: str) -> dict[str, dict[str, list[list[str]]]]:
    """table -> chain -> rules (as word lists) of an iptables-restore text, in order."""
    tables: dict[str, dict[str, list[list[str]]]] = {}
    table = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
            tables.setdefault(table, {})
        elif line.startswith(("-A ", "-I ")) and table:
            words = shlex.split(line)
            tables[table].setdefault(words[1], []).append(words)
    return tables


def _target(words: list[str]) -> str:
    return words[words.index("-j") + 1] if "-j" in words else ""


def _value(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1] if flag in words else ""


def _text(words: list[str]) -> str:
    """Words back into a rule line, quoted the way iptables-save quotes (only words with spaces)."""
    return " ".join(f'"{w}"' if " " in w else w for w in words)


def _outside_note(words: list[str]) -> str:
    """Why a rule cannot match a connection arriving from outside the cluster ("" if it can)."""
    comment = _value(words, "--comment")
    for key, why in NOTES.items():
        if key in comment:
            return why
    if "-s" in words and words[words.index("-s") - 1] != "!":
        return "only for packets from that source (a pod reaching itself through the service: 'hairpin')"
    if "--src-type" in words:
        return "only for connections made by the node itself"
    if "-d" in words and words[words.index("-d") - 1] != "!":
        return f"only for connections to {_value(words, '-d')} (the service's cluster IP), not to a NodePort"
    return ""


def _probability(words: list[str]) -> float | None:
    p = _value(words, "--probability")
    return float(p) if p else None


class _Walker:
    """Follows one outside connection through a node's rendered rules."""

    def __init__(self, topo: Topology, plan: NetworkPlan, node: str, service: str):
        self.topo, self.plan, self.node = topo, plan, node
        self.svc = topo.service(service)
        self.rules = _parse(render_node(topo, plan, node).text())
        self.path = NodePath(node=node, az=topo.node(node).az)
        self.shown: set[str] = set()
        self.dnat: dict[str, float] = {}  # ip:port -> share of connections
        self.drop_marked = False  # legacy: KUBE-MARK-DROP, enforced later by filter KUBE-FIREWALL

    def step(self, table: str, words: list[str], depth: int, applies: bool = True, note: str = "") -> None:
        self.path.steps.append(Step(table, words[1], _text(words), describe_rule(_text(words)), depth, applies, note))

    def chain(self, table: str, chain: str, depth: int, share: float) -> None:
        """Show a chain's rules in order; follow the ones an outside connection can match."""
        if chain in self.shown:
            self.path.steps.append(Step(table, chain, "", f"(the rules of {chain}, shown above)", depth))
            return
        self.shown.add(chain)
        left = share
        for words in self.rules.get(table, {}).get(chain, []):
            why_not = _outside_note(words)
            if why_not:
                self.step(table, words, depth, applies=False, note=why_not)
                continue
            target = _target(words)
            p = _probability(words)
            this = left * p if p is not None else left
            self.step(table, words, depth)
            if target == "DNAT":
                self.dnat[_value(words, "--to-destination")] = round(share, 6)
            elif target == "KUBE-MARK-MASQ":
                self.path.masquerade = True
                self.chain(table, target, depth + 1, this)
            elif target == "KUBE-MARK-DROP":
                self.path.dropped = "marked for dropping: this node has no local pod of the service"
                self.drop_marked = True
                self.chain(table, target, depth + 1, this)
            elif target in ("DROP", "REJECT"):
                self.path.dropped = _value(words, "--comment") or f"{target} in {chain}"
            elif target.startswith("KUBE-"):
                self.chain(table, target, depth + 1, this)
            if target.startswith("KUBE-SEP-") or target in ("DNAT", "DROP", "REJECT"):
                left -= this  # this share of connections is decided; the rest go on to the next rule
                if left <= 1e-9:
                    break
            elif p is None and target.startswith("KUBE-") and target not in ("KUBE-MARK-MASQ", "KUBE-MARK-DROP"):
                break  # an unconditional jump: kube-proxy's chains end in a decision, nothing comes back

    def walk(self) -> NodePath:
        nat = self.rules.get("nat", {})
        entry = next(
            (w for w in nat.get("KUBE-SERVICES", []) if _value(w, "--comment") == NODEPORTS_LAST_COMMENT), None
        )
        if entry is not None:
            self.step("nat", entry, 0, note="nat PREROUTING -> KUBE-SERVICES: a NodePort packet skips the cluster-IP "
                      "rules and reaches this last rule")  # fmt: skip
        port = str(self.svc.node_port)
        for words in nat.get("KUBE-NODEPORTS", []):
            if _value(words, "--dport") != port:
                continue
            target = _target(words)
            self.step("nat", words, 1)
            if target == "KUBE-MARK-MASQ":
                self.path.masquerade = True
                self.chain("nat", target, 2, 1.0)
            elif target.startswith("KUBE-"):
                self.chain("nat", target, 2, 1.0)
                break
        filt = self.rules.get("filter", {})
        if self.dnat:
            for words in filt.get("KUBE-FORWARD", []):
                note, applies = "filter FORWARD: the DNATed packet is forwarded to the pod", True
                if "INVALID" in words:
                    note += "; only packets conntrack finds out of window (e.g. late retransmissions) match"
                elif "--mark" in words and not self.path.masquerade:
                    note, applies = "no masquerade mark on this connection: it falls through to FORWARD's policy", False
                self.step("filter", words, 0, applies=applies, note=note)
            if self.path.masquerade:
                for words in nat.get("KUBE-POSTROUTING", []):
                    self.step("nat", words, 0, note="nat POSTROUTING: on the way out to the pod")
        else:
            for words in filt.get("KUBE-EXTERNAL-SERVICES", []):
                if _value(words, "--dport") == port:
                    self.step("filter", words, 0, note="filter INPUT: no DNAT, so the packet is for the node itself")
                    self.path.dropped = self.path.dropped or _value(words, "--comment")
            if self.drop_marked and "KUBE-FIREWALL" in filt:
                for words in filt["KUBE-FIREWALL"]:
                    self.step("filter", words, 0, note="filter INPUT -> KUBE-FIREWALL")
        self._endpoints()
        return self.path

    def _endpoints(self) -> None:
        by_ip = {str(h.ip): h for h in self.plan.hosts if h.ip is not None}
        for address, share in self.dnat.items():
            pod = by_ip.get(address.split(":")[0])
            self.path.endpoints.append(
                {
                    "pod": pod.name if pod else address,
                    "address": address,
                    "node": pod.node if pod else None,
                    "az": pod.az if pod else None,
                    "share": share,
                }
            )


def _node_summary(path: NodePath, node_port: int, nodes: list[str]) -> str:
    """The outcome in one paragraph; `nodes` share these rules (then pods are placed by name, not "this node")."""
    alone = len(nodes) == 1
    head = f"A connection from outside to {path.node}:{node_port}" if alone else (
        f"A connection from outside to NodePort {node_port} of any of {', '.join(nodes)}"
    )  # fmt: skip
    if path.dropped and not path.endpoints:
        return f"{head} is dropped ({path.dropped})."
    if not path.endpoints:
        return f"{head} matches no rule of this service."
    parts = []
    for ep in path.endpoints:
        if alone:
            where = "this node" if ep["node"] == path.node else f"{ep['node']}"
            if ep["az"] and ep["az"] != path.az:
                where += f", {ep['az']}: another AZ"
        else:
            where = f"on {ep['node']}, {ep['az']}"
        parts.append(f"{ep['pod']} ({ep['address']}, {where}) with probability {ep['share']:.2f}")
    text = f"{head} goes to " + " or ".join(parts) + "."
    if path.masquerade:
        whose = f"{path.node}'s" if alone else "the receiving node's"
        text += f" Its source is rewritten to {whose} address (SNAT), so replies come back through it."
    else:
        text += " Its source is kept (no SNAT)."
    return text


def explain(
    topo: Topology, service: str | None = None, node: str | None = None, time_scale: float = 1.0
) -> dict[str, Any]:
    """Everything `lab explain` shows, as data (`time_scale`: a running lab's ELB timer scale)."""
    names = [s.name for s in topo.services]
    if service is not None and service not in names:
        raise InputError(f"unknown service '{service}'; services: {', '.join(names)}")
    nodes = [n.name for n in topo.k8s_nodes]
    if node is not None and node not in nodes:
        raise InputError(f"unknown node '{node}'; nodes: {', '.join(nodes)}")
    plan = build_plan(topo)
    elb = topo.elb
    hc = elb.health_check
    hc_port = topo.health_check_port
    checked = next((s.name for s in topo.services if s.node_port == hc_port), None)
    checks = sum(len(topo.elb_targets(e)) for e in topo.elb_nodes)
    out: dict[str, Any] = {
        "topology": topo.name,
        "kubernetes_version": topo.cluster.kubernetes_version,
        "kube_proxy": topo.kube_proxy.flavour,
        "elb": {
            "cross_zone": elb.cross_zone,
            "idle_timeout_s": elb.idle_timeout,
            "nodes": [
                {
                    "name": e.name,
                    "az": e.az,
                    "address": str(plan.ip(e.name)),
                    "instances": [n.name for n in topo.elb_targets(e)],
                }
                for e in topo.elb_nodes
            ],
            "listeners": [
                {
                    "port": lst.port,
                    "service": lst.service,
                    "node_port": topo.service(lst.service).node_port,
                    "policy": topo.service(lst.service).external_traffic_policy,
                }
                for lst in elb.listeners
            ],
            "health_check": {
                "target": f"TCP:{hc_port}",
                "checks_service": checked,
                "interval_s": hc.interval,
                "timeout_s": hc.timeout,
                "unhealthy_threshold": hc.unhealthy_threshold,
                "healthy_threshold": hc.healthy_threshold,
                "checks_per_minute": round(checks * 60 / hc.interval, 1),
            },
        },
        "elb_words": _elb_words(topo, plan, checked, checks, time_scale),
        "services": [],
        "flavour": {"name": topo.kube_proxy.flavour, "words": FLAVOURS[topo.kube_proxy.flavour]},
        "other_flavour": {
            "name": "modern" if topo.kube_proxy.flavour == "legacy" else "legacy",
            "words": FLAVOURS["modern" if topo.kube_proxy.flavour == "legacy" else "legacy"],
        },
        "policies": POLICIES,
    }
    for svc in topo.services:
        if service is not None and svc.name != service:
            continue
        paths = [_Walker(topo, plan, n, svc.name).walk() for n in nodes if node is None or n == node]
        groups: dict[tuple, list[NodePath]] = {}
        for p in paths:
            groups.setdefault(p.signature(), []).append(p)
        listener = next((lst.port for lst in elb.listeners if lst.service == svc.name), None)
        out["services"].append(
            {
                "name": svc.name,
                "namespace": svc.namespace,
                "policy": svc.external_traffic_policy,
                "listener": listener,
                "node_port": svc.node_port,
                "pod_port": svc.port,
                "cluster_ip": str(plan.cluster_ips[svc.name]),
                "health_check_node_port": health_check_node_port(topo, svc.name),
                "pods": [
                    {
                        "name": p.name,
                        "node": p.node,
                        "az": topo.node(p.node).az,
                        "address": f"{plan.ip(p.name)}:{svc.port}",
                    }
                    for p in topo.pods_of(svc.name)
                ],
                "nodes": [_group_json(group, svc.node_port) for group in groups.values()],
            }
        )
    return out


def _group_json(group: list[NodePath], node_port: int) -> dict[str, Any]:
    first = group[0]
    first.summary = _node_summary(first, node_port, [p.node for p in group])
    return {"nodes": [p.node for p in group], **first.to_json()}


def _pod_json(topo: Topology, plan: NetworkPlan, pod: str, port: int) -> dict[str, str]:
    spec = next(p for p in topo.pods if p.name == pod)
    return {"name": pod, "node": spec.node, "az": topo.node(spec.node).az, "address": f"{plan.ip(pod)}:{port}"}


def _elb_words(topo: Topology, plan: NetworkPlan, checked: str | None, checks: int, scale: float) -> list[str]:
    elb, hc = topo.elb, topo.elb.health_check
    words = [
        f"{len(topo.elb_nodes)} ELB nodes ({', '.join(e.name for e in topo.elb_nodes)}), one DNS name: each client "
        f"connection goes to one of them, which proxies it to an instance's NodePort (a second TCP connection).",
        "Cross-zone load balancing is "
        + (
            "on: every ELB node sends to every instance."
            if elb.cross_zone
            else "off: each ELB node sends only to the "
            "instances in its own AZ (the default when Kubernetes creates the ELB through the API)."
        ),  # fmt: skip
        f"ONE health check per instance per ELB node, shared by all listeners: TCP connect to port "
        f"{topo.health_check_port}"
        + (f" (the NodePort of {checked}, the first listener)" if checked else "")
        + f" every {hc.interval:g} s, {hc.timeout:g} s timeout; OutOfService after {hc.unhealthy_threshold} "
        f"failures, back after {hc.healthy_threshold} successes. It says nothing about the other listeners' services.",
        f"A check starts every {hc.interval:g} s whether the last one passed, was refused or timed out. In the lab a "
        f"small checker in each ELB node makes them (HAProxy's own check would wait {hc.interval:g} s after a "
        f"timeout ended); HAProxy asks it over loopback which instances are InService.",
        f"So the ELB makes {checks} health-check connections every {hc.interval:g} s "
        f"({checks * 60 / hc.interval:.0f} a minute), idle or not: each goes through kube-proxy's rules like a real "
        f"connection (DNAT, maybe to another node) and leaves conntrack entries behind; each failed one counts as "
        f"a BackendConnectionError.",
        f"The idle timeout is {elb.idle_timeout:g} s on both sides; TCP keep-alives do not reset it.",
    ]
    if scale != 1.0:
        words.append(
            f"This running lab scales the ELB's timers by {scale:g}: a check every {hc.interval * scale:g} s, "
            f"{hc.timeout * scale:g} s timeout (the kernel's TCP timers are not scaled)."
        )
    return words
