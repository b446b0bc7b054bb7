"""The traced path, told hop by hop from recorded evidence: one builder per hop, in path order. Pure.

Each builder reads the evidence and what the hops before it found (a `Story`), and returns its hop (or None
when the connection never got there). `assemble` runs them in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lab.teach.flows import Tuple
from lab.teach.packets import (
    attempt_lines,
    conntrack_words,
    dnat_target,
    host_by_ip,
    is_answer,
    is_syn,
    kube_chains,
    matched_rules,
    select,
    where_it_stopped,
)
from lab.teach.tracedata import Evidence, Hop, TraceResult


@dataclass
class Story:
    """What the hops found so far: the summary being filled, the packets known to be ours, the first failure."""

    ev: Evidence
    summary: dict[str, Any]
    ours: set[int] = field(default_factory=set)  # ids of the traced packets that belong to this connection
    failure: str | None = None
    hops: list[Hop] = field(default_factory=list)

    @property
    def n(self) -> str:  # the lab option in the commands a hop suggests
        return f" -n {self.ev.lab}"

    def fail(self, where: str) -> None:
        self.failure = self.failure or where


def new_story(ev: Evidence) -> Story:
    topo, a = ev.topology, ev.attempt
    summary: dict[str, Any] = {
        "client": f"{a.local[0]}:{a.local[1]}",
        "address": f"{ev.target[0]}:{ev.target[1]}",
        "elb_node": ev.hop if ev.via == "elb" else None,
        "instance": None,
        "chains": [],
        "dnat_to": None,
        "snat": None,
        "snat_to": None,
        "pod": None,
        "pod_node": None,
        "pod_az": None,
        "cross_az": False,
        "connect_ms": a.connect_ms,
        "other_syns_left_out": 0,
        "azs": [az.name for az in topo.azs],
    }
    return Story(ev, summary)


def client_hop(story: Story) -> Hop:
    ev, a = story.ev, story.ev.attempt
    src = ev.plan.host(a.source)
    where = f"{src.az}" if src.az else ("client VPC" if src.role == "client" else "")
    hop = Hop(
        "client",
        src.name,
        src.az,
        f"client {src.name} ({src.ip}, {where or src.role})",
        evidence={"local": story.summary["client"], "dest": story.summary["address"], "connect_ms": a.connect_ms},
        see=[f"lab exec {src.name}{story.n} -- ss -tn"],
        address=str(src.ip or a.local[0]),
    )
    service = ev.service
    dest_what = (
        f"ELB node {ev.hop}'s listener :{ev.target[1]} for {service}"
        if ev.via == "elb"
        else f"node {ev.hop}'s NodePort {ev.target[1]} for {service} (no ELB)"
    )
    hop.says.append(
        f"opens a TCP connection from {a.local[0]}:{a.local[1]} to {ev.target[0]}:{ev.target[1]}, {dest_what}."
    )
    if src.role == "client":
        hop.says.append("It is routed through the VPC peering (rt-client -> rt-cluster); nothing rewrites it.")
    if a.connect_ms is not None:
        hop.says.append(f"connect() took {a.connect_ms:.2f} ms.")
    return hop


def _no_instance_words(health: dict[str, Any] | None) -> str:
    """Why an ELB node had nowhere to send a connection: its health view of the instances it knows."""
    if health is None or "error" in health:
        error = health.get("error") if health else "not read"
        return f"It had no instance to send to (its health view is unreadable: {error})."
    states = ", ".join(
        f"{name} {v['state']} ({v['status']}, last check {v['check'] or '-'})" for name, v in health["view"].items()
    )
    return (
        f"It had no instance to send to: every instance it knows failed its health check, so it closed the "
        f"client's connection at once. Its view: {states or 'no instances'}."
    )


def elb_hop(story: Story) -> Hop | None:
    """The ELB node, a proxy: the client's connection ends here, and a second one goes to an instance."""
    ev = story.ev
    if ev.via != "elb":
        return None
    topo, a, log_line, entry = ev.topology, ev.attempt, ev.log_line, ev.entry
    svc = topo.service(ev.service)
    elb_spec = next(e for e in topo.elb_nodes if e.name == ev.hop)
    known = [x.name for x in topo.elb_targets(elb_spec)]
    hop = Hop(
        "elb", ev.hop, elb_spec.az, f"ELB node {ev.hop} ({elb_spec.az})", address=f"{ev.target[0]}:{ev.target[1]}"
    )
    hop.says.append(
        f"accepts the client's connection on listener :{ev.target[1]} and opens a second, separate TCP connection "
        f"to an instance's NodePort {svc.node_port}: the pod will never see the client's address."
    )
    hop.says.append(
        f"It picks instances by round robin among those it knows: {', '.join(known)} "
        f"(cross-zone load balancing {'on' if topo.elb.cross_zone else 'off: its own AZ only'})."
    )
    if log_line is not None:
        if story.summary["instance"] is None and log_line.server in known:
            story.summary["instance"] = log_line.server
        hop.evidence["log"] = log_line.to_json()
        connect = (
            f"{log_line.connect_ms} ms to connect to the instance (the ELB's Latency)"
            if log_line.connect_ms >= 0
            else "it never got a connection to an instance"
        )
        waited = (
            f"{log_line.queue_ms} ms waiting (surge queue, or pauses between retries), "
            if log_line.queue_ms > 0
            else ""
        )
        hop.says.append(
            f"Its log: instance {log_line.server}; {waited}{connect}, session {log_line.total_ms} ms, "
            f"{log_line.bytes_to_client} bytes back; {log_line.termination_words()}"
            + (f"; {log_line.retries} retries (each a BackendConnectionError)" if log_line.retries else "")
            + "."
        )
        hop.problem = not log_line.ended_normally
        if log_line.server == "<NOSRV>":
            hop.says.append(_no_instance_words(ev.elb_health))
    else:
        hop.says.append("No log line for this connection appeared (HAProxy logs a session when it ends).")
    if entry is not None:
        hop.says.append(f"Its connection to the instance: {entry[1].original} (from conntrack on {entry[0]}).")
        hop.evidence["backend_connection"] = str(entry[1].original)
    hop.see.append(f"grep '{a.local[0]}:{a.local[1]} ' {ev.log_path}")
    return hop


def node_hop(story: Story) -> Hop | None:
    """The instance whose NodePort the connection hit: kube-proxy's rules and its conntrack entry."""
    ev, summary = story.ev, story.summary
    instance = summary["instance"]
    if instance is None:
        return None
    topo, plan, a, n = ev.topology, ev.plan, ev.attempt, story.n
    svc = topo.service(ev.service)
    node_spec = topo.node(instance)
    hop = Hop("node", instance, node_spec.az, f"instance {instance} ({node_spec.az}): kube-proxy")
    hop.address = f"{plan.ip(instance)}:{svc.node_port}"
    flow = ev.entry[1] if ev.entry else None
    node_packets = ev.packets.get(instance, [])
    later: list[str] = []  # what became of connect attempts known only from the trace
    if flow is not None:
        syns = select(node_packets, flow.original, is_syn)
    elif ev.via == "node":
        first = Tuple(a.local[0], a.dest[0], a.local[1], a.dest[1])
        syns = select(node_packets, first, is_syn)
        later = attempt_lines(plan, syns[:1], node_packets) if syns and a.error else []
    else:
        elb_ip = str(plan.ip(ev.hop))
        syns = [
            p
            for p in node_packets
            if is_syn(p) and p.first.get("SRC") == elb_ip and p.first.get("DPORT") == str(svc.node_port)
        ]
        if syns:
            checks_here = svc.node_port == topo.health_check_port
            hop.says.append(
                f"No answer came back, so the ELB node's connection is not known by its ports: these are all "
                f"{len(syns)} SYNs from {ev.hop} to NodePort {svc.node_port} during the trace"
                + (
                    " (health checks use the same port and may be among them)."
                    if checks_here
                    else f" (health checks go to port {topo.health_check_port}: these are its connect attempts)."
                )
            )
            later = attempt_lines(plan, syns, node_packets)
    story.ours.update(id(p) for p in syns)
    if syns:
        syn = syns[0]  # the first SYN went through the nat rules; retransmissions only meet conntrack's entry
        hop.says.append(f"receives the SYN {syn.first.summary()} on {syn.first.get('IN') or 'lo'}.")
        if len(syns) > 1 and (flow is not None or ev.via == "node"):
            hop.says.append(
                f"The SYN arrived {len(syns)} times: the client retransmitted it (no answer in time; TCP "
                "retries after about 1 s, 3 s, 7 s ...)."
            )
        hop.rules = matched_rules(syn, ev.deltas.get(instance))
        chains = kube_chains(syn)
        summary["chains"] = chains
        if chains:
            hop.says.append(f"It goes through {' -> '.join(chains)} (every matching rule below, in order).")
        hop.says += later
        stopped = where_it_stopped(syn, conntrack_words(ev.conntrack.get(instance)), tracked=flow is not None)
        if not syn.rules() and flow is not None:
            hop.says.append(
                "The trace saw no rule here (rules of the iptables-legacy backend are invisible to nftables "
                "tracing); conntrack below shows what they did."
            )
        if stopped:
            hop.says.append(f"It stops here: {stopped}.")
            hop.problem = True
            story.fail(f"{instance}: {stopped}")
        dnat = dnat_target(syn)
        if dnat:
            summary["dnat_to"] = dnat
        hop.evidence["syn"] = syn.to_json()
    elif flow is None:
        hop.says.append("No SYN of this connection was traced here.")
    if flow is not None:
        pod_host = host_by_ip(plan, flow.reply.src)
        pod_name = pod_host.name if pod_host else flow.reply.src
        summary["dnat_to"] = f"{flow.reply.src}:{flow.reply.sport}"
        summary["snat"] = flow.snat
        summary["snat_to"] = f"{flow.reply.dst}:{flow.reply.dport}" if flow.snat else None
        hop.says.append(
            f"DNAT: the destination becomes pod {pod_name} at {flow.reply.src}:{flow.reply.sport}"
            + (f" on {pod_host.node}." if pod_host and pod_host.node else ".")
        )
        if flow.snat:
            hop.says.append(
                f"SNAT (MASQUERADE): the source becomes {flow.reply.dst}:{flow.reply.dport}, this node's own "
                f"address, because the packet carries the masquerade mark (externalTrafficPolicy "
                f"{svc.external_traffic_policy}). The pod answers this node, which can undo both rewrites."
            )
        else:
            hop.says.append(
                f"No SNAT: the source stays {flow.original.src}:{flow.original.sport}, so the pod sees who "
                f"really connected (externalTrafficPolicy {svc.external_traffic_policy})."
            )
        hop.says.append(
            f"conntrack remembers it [{flow.state or 'no state'}]: original {flow.original}, reply {flow.reply}."
        )
        hop.evidence["conntrack"] = flow.to_json()
        hop.evidence["conntrack_line"] = flow.conntrack_line()
        hop.see.append(
            f"lab exec {instance}{n} -- conntrack -L -p tcp --orig-port-src {flow.original.sport} "
            f"--orig-port-dst {flow.original.dport}"
        )
    elif not hop.problem and a.error:
        hop.says.append("conntrack has no entry known to be this connection's on this node.")
        hop.problem = True
    hop.see.append(f"lab exec {instance}{n} -- iptables-save -c -t nat | grep -E 'KUBE-(NODEPORTS|EXT|SVC|SEP)'")
    return hop


def transit_hop(story: Story) -> Hop | None:
    """The pod's node, when kube-proxy sent the connection to a pod on another node."""
    ev = story.ev
    if ev.transit is None or ev.entry is None:
        return None
    topo, plan, entry = ev.topology, ev.plan, ev.entry
    name, flow = ev.transit
    sent = entry[1].reply.reversed()  # the packet as the entry node sent it on, after both rewrites
    node_spec = topo.node(name)
    hop = Hop("transit", name, node_spec.az, f"node {name} ({node_spec.az}): the pod's node")
    hop.address = str(plan.ip(name))
    crossed = node_spec.az != topo.node(entry[0]).az
    hop.says.append(
        f"{entry[0]} forwards the rewritten packet {sent}; the VPC route table sends the pod CIDR "
        f"{plan.pod_cidrs[name]} to {name}"
        + (f", crossing from {topo.node(entry[0]).az} to {node_spec.az}." if crossed else ".")
    )
    syns = select(ev.packets.get(name, []), sent, is_syn)
    story.ours.update(id(p) for p in syns)
    if syns:
        hop.rules = matched_rules(syns[0], ev.deltas.get(name))
        hop.evidence["syn"] = syns[0].to_json()
        stopped = where_it_stopped(syns[0], conntrack_words(ev.conntrack.get(name)), tracked=flow is not None)
        if stopped:
            hop.says.append(f"It stops here: {stopped}.")
            hop.problem = True
            story.fail(f"{name}: {stopped}")
        else:
            hop.says.append(
                "No KUBE-* rule rewrites it here (it is not addressed to a service or a NodePort): "
                "it is forwarded to the pod's bridge cbr0 as it is."
            )
    if flow is not None:
        hop.says.append(f"conntrack here has its own entry, without NAT: original {flow.original}, reply {flow.reply}.")
        hop.evidence["conntrack"] = flow.to_json()
        hop.see.append(f"lab exec {name}{story.n} -- conntrack -L -p tcp --orig-port-src {flow.original.sport}")
    else:
        hop.says.append("conntrack here has no entry for it.")
        hop.problem = True
    story.summary["cross_az"] = story.summary["cross_az"] or crossed
    return hop


def pod_hop(story: Story) -> Hop | None:
    """The pod: what it answered (whoami, with the peer address it saw), or where kube-proxy meant to send it."""
    ev, summary = story.ev, story.summary
    topo, plan, entry = ev.topology, ev.plan, ev.entry
    svc = topo.service(ev.service)
    who = ev.attempt.who
    if who:
        pod_az = who.get("az")
        summary.update(pod=who["pod"], pod_node=who["node"], pod_az=pod_az)
        hop = Hop("pod", who["pod"], pod_az, f"pod {who['pod']} on {who['node']} ({pod_az})")
        hop.address = f"{who['pod_ip']}:{svc.port}"
        peer = f"{who['client_ip']}:{who['client_port']}"
        hop.says.append(f"The Thrift server at {who['pod_ip']}:{svc.port} answers whoami.")
        peer_host = host_by_ip(plan, who["client_ip"])
        if peer_host is not None and peer_host.role == "node":
            whose = f"node {peer_host.name}'s address (SNAT)"
        elif who["client_ip"] in {str(b.address.ip) for b in plan.bridges if b.name == "cbr0" and b.address}:
            whose = "its node's bridge address (SNAT: the pod's node did the NAT itself)"
        elif peer_host is not None:
            whose = f"{peer_host.name}'s own address" + (" (no SNAT)" if peer_host.role != "pod" else "")
        else:
            whose = "an address outside the lab"
        hop.says.append(f"It saw the connection come from {peer}: {whose}.")
        hop.evidence["whoami"] = who
        hop.see.append(f"lab call {ev.service} whoami{story.n}")
        if entry is not None:
            summary["cross_az"] = summary["cross_az"] or (pod_az != topo.node(entry[0]).az)
        return hop
    if entry is None:
        return None
    pod_host = host_by_ip(plan, entry[1].reply.src)
    if pod_host is None or pod_host.role != "pod":
        return None
    summary.update(pod=pod_host.name, pod_node=pod_host.node, pod_az=pod_host.az)
    hop = Hop("pod", pod_host.name, pod_host.az, f"pod {pod_host.name} on {pod_host.node} ({pod_host.az})")
    hop.address = f"{entry[1].reply.src}:{entry[1].reply.sport}"
    if any(h.problem for h in story.hops):
        hop.says.append("kube-proxy chose this pod, but the connection never reached it (see above).")
    else:
        hop.says.append(f"kube-proxy sent the connection here, but no answer came back ({ev.attempt.error}).")
    hop.problem = True
    return hop


def reply_hop(story: Story) -> Hop | None:
    """The way back: conntrack on the entry node undoes both rewrites."""
    ev = story.ev
    if ev.entry is None:
        return None
    name, flow = ev.entry
    answers = select(ev.packets.get(name, []), flow.reply, is_answer)
    if not answers and not ev.attempt.who:
        return None
    hop = Hop("reply", name, ev.topology.node(name).az, "the reply path")
    story.ours.update(id(p) for p in answers)
    hop.says.append(
        f"The pod answers {flow.reply} (to the address it saw). "
        + (f"It goes back through {ev.transit[0]}, which only forwards it. " if ev.transit else "")
        + f"On {name} conntrack recognises the reply and undoes both rewrites: it leaves as "
        f"{flow.original.reversed()}."
    )
    if answers:
        ans = answers[0]
        hop.rules = matched_rules(ans, ev.deltas.get(name))
        accept = [r for r in hop.rules if r["verdict"] == "ACCEPT"]
        hop.says.append(
            f"The {ans.first.tcp_flags} skips the nat table (only a connection's first packet is NATed by rules)"
            + (f"; {accept[-1]['meaning']}." if accept else ".")
        )
        hop.evidence["answer"] = ans.to_json()
    if ev.via == "elb":
        hop.says.append(f"{ev.hop} relays the pod's answer on the client's own connection to {ev.attempt.source}.")
    return hop


BUILDERS = (client_hop, elb_hop, node_hop, transit_hop, pod_hop, reply_hop)


def assemble(ev: Evidence) -> TraceResult:
    """Every hop of the traced connection, in path order, and the summary they fill."""
    story = new_story(ev)
    if ev.entry is not None:
        story.summary["instance"] = ev.entry[0]
    elif ev.via == "node":
        story.summary["instance"] = ev.hop
    for build in BUILDERS:
        hop = build(story)
        if hop is not None:
            story.hops.append(hop)
    story.summary["other_syns_left_out"] = sum(
        1 for plist in ev.packets.values() for p in plist if is_syn(p) and id(p) not in story.ours
    )
    error = ev.attempt.error
    if error and story.failure:
        error = f"{error}; {story.failure}"
    return TraceResult(ev.lab, ev.service, ev.via, ev.attempt.error is None, error, story.hops, story.summary)
