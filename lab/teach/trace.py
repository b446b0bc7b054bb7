"""`lab trace`: one real connection through a running lab, reconstructed hop by hop from independent evidence.

Evidence, each from a different source, so they check one another:
- the client's own socket (source port, connect time) and the pod's whoami answer (which pod, on which node
  and AZ, and the peer address the pod saw: SNAT shows there);
- the ELB node's connection log (HAProxy tcplog: the instance it chose, timers, how the session ended);
- nftrace on every node the packet may cross (which KUBE-* rules the SYN and the SYN-ACK matched);
- the conntrack entry on those nodes (original and reply tuples: DNAT to which pod, SNAT or not).
Health checks and other clients are traced too; only the packets with this connection's own tuples are kept.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from lab import rpc, toolbox
from lab.errors import InputError, LabError
from lab.haproxy_stats import instance_health, show_stat
from lab.hosts import Host
from lab.lab import Lab
from lab.render.kubeproxy import describe_rule
from lab.teach import elblog
from lab.teach.flows import Flow, Tuple, tcp_flows
from lab.teach.nftrace import TracedPacket, capture_many

VIAS = ("elb", "node")


@dataclass
class Hop:
    """One stop on the path, told in plain words, with the facts behind it and how to see them yourself."""

    kind: str  # client | elb | node | transit | pod | reply
    host: str
    az: str | None
    title: str
    says: list[str] = field(default_factory=list)
    rules: list[dict[str, str]] = field(default_factory=list)  # for node hops: matched rules, in order
    evidence: dict[str, Any] = field(default_factory=dict)
    see: list[str] = field(default_factory=list)  # commands that show the same thing
    problem: bool = False  # the connection failed here
    address: str = ""  # the host's address on this path

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "host": self.host,
            "az": self.az,
            "title": self.title,
            "says": self.says,
            "rules": self.rules,
            "evidence": self.evidence,
            "see": self.see,
            "problem": self.problem,
            "address": self.address,
        }


@dataclass
class TraceResult:
    lab: str
    service: str
    via: str
    ok: bool
    error: str | None
    hops: list[Hop]
    summary: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        from lab.teach.diagram import mermaid

        return {
            "lab": self.lab,
            "service": self.service,
            "via": self.via,
            "ok": self.ok,
            "error": self.error,
            "summary": self.summary,
            "hops": [h.to_json() for h in self.hops],
            "mermaid": mermaid(self),
        }


@dataclass
class _Attempt:
    source: Host
    local: tuple[str, int]
    dest: tuple[str, int]
    connect_ms: float | None = None
    error: str | None = None
    who: dict[str, Any] | None = None
    rpc_ms: float | None = None


def _open(source: Host, dest: tuple[str, int], timeout: float) -> tuple[socket.socket | None, _Attempt]:
    """Connect from inside `source`, bound first so the source port is known even if the connect fails."""

    def work() -> tuple[socket.socket | None, _Attempt]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.bind(("0.0.0.0", 0))
        attempt = _Attempt(source=source, local=(source.ip or "0.0.0.0", s.getsockname()[1]), dest=dest)
        t0 = time.perf_counter()
        try:
            s.connect(dest)
        except OSError as exc:
            s.close()
            attempt.error = f"connect failed: {exc.strerror or exc}"
            return None, attempt
        attempt.connect_ms = round((time.perf_counter() - t0) * 1000, 3)
        attempt.local = s.getsockname()[:2]
        return s, attempt

    return source.in_netns(work)


def _whoami(sock: socket.socket, attempt: _Attempt, timeout: float) -> None:
    from labservices.client import call, client_on_socket

    t0 = time.perf_counter()
    try:
        attempt.who = call(client_on_socket(sock, timeout), "whoami", [])
        attempt.rpc_ms = round((time.perf_counter() - t0) * 1000, 3)
    except Exception as exc:  # thriftpy2 transport errors carry no errno
        text = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if "read 0 bytes" in text:
            text = "the connection was closed before any answer came back"
        attempt.error = f"whoami failed: {text}"


def _parallel(fn, items: list) -> list:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def resolve_target(
    lab: Lab, service: str, via: str = "elb", source: str | None = None, target: str | None = None
) -> rpc.Target:
    """Check the arguments and pick the ELB node / node (at random when not given), as `lab call` does."""
    if via not in VIAS:
        raise InputError(f"--via {via!r}: choose one of {', '.join(VIAS)} (a pod is reached through one of them)")
    return rpc.resolve(lab, service, via, target, source)


def trace(
    lab: Lab,
    service: str,
    via: str = "elb",
    source: str | None = None,
    target: str | None = None,
    timeout: float = 5.0,
) -> TraceResult:
    """Send one connection (a whoami RPC) and reconstruct every hop it took."""
    topo = lab.topology
    tgt = resolve_target(lab, service, via, source, target)
    svc = topo.service(service)
    pod_nodes = [p.node for p in topo.pods_of(service)]
    if via == "elb":
        elb_spec = next(e for e in topo.elb_nodes if e.name == tgt.hop)
        instances = [n.name for n in topo.elb_targets(elb_spec)]
    else:
        instances = [tgt.hop]
    watched = [n.name for n in topo.k8s_nodes if n.name in set(instances) | set(pod_nodes)]
    hosts = {name: lab.host(name) for name in watched}
    elb_log = lab.state.path("logs", f"{tgt.hop}.haproxy.log") if via == "elb" else None
    log_offset = elblog.log_size(elb_log) if elb_log else 0

    with capture_many(hosts.values(), [svc.node_port, svc.port]) as captures:
        before = _counters(hosts)
        sock, attempt = _open(tgt.source, (tgt.ip, tgt.port), timeout)
        entry: tuple[str, Flow] | None = None
        transit: tuple[str, Flow | None] | None = None
        try:
            if sock is not None:
                _whoami(sock, attempt, timeout)
            # Read conntrack while the connection is still open: the entries show ESTABLISHED.
            entry = _entry_flow(lab, hosts, attempt, svc.node_port, via, tgt.hop)
            if entry is not None:
                transit = _transit_flow(lab, hosts, entry)
        finally:
            if sock is not None:
                sock.close()
        log_line = None
        if elb_log is not None:
            log_line = elblog.find_connection(
                elb_log, log_offset, attempt.local[0], attempt.local[1], f"listener-{tgt.port}"
            )
        packets = {name: cap.packets() for name, cap in captures.items()}
        after = _counters(hosts)
    deltas = {
        name: {key: n - before.get(name, {}).get(key, 0) for key, n in counts.items()} for name, counts in after.items()
    }
    return _assemble(lab, svc.name, via, tgt, attempt, log_line, entry, transit, packets, hosts, deltas)


Counters = dict[str, dict[tuple[str, str, str], int]]  # node -> (table, chain, rule) -> packets


def _counters(hosts: dict[str, Host]) -> Counters:
    """Per-rule packet counters of the KUBE-* chains (iptables-save -c) on every node, read in parallel."""
    names = list(hosts)

    def read(name: str) -> dict[tuple[str, str, str], int]:
        try:
            return {(r.table, r.chain, r.rule): r.packets for r in toolbox.iptables_counters(hosts[name])}
        except (LabError, ValueError):
            return {}

    return dict(zip(names, _parallel(read, names), strict=True))


def _entry_flow(
    lab: Lab, hosts: dict[str, Host], attempt: _Attempt, node_port: int, via: str, hop: str
) -> tuple[str, Flow] | None:
    """The conntrack entry on the node whose NodePort the connection hit, and that node's name."""
    if attempt.who:
        who = attempt.who
        reply = Tuple(src=who["pod_ip"], dst=who["client_ip"], sport=0, dport=int(who["client_port"]))
        names = list(hosts)
        found = _parallel(lambda n: tcp_flows(hosts[n], reply=reply), names)
        for name, flows in zip(names, found, strict=True):
            node_ip = str(lab.plan.ip(name))
            for flow in flows:
                if flow.original.dst == node_ip and flow.original.dport == node_port:
                    return name, flow
        return None
    if via == "node":
        original = Tuple(src=attempt.local[0], dst=attempt.dest[0], sport=attempt.local[1], dport=attempt.dest[1])
        flows = tcp_flows(hosts[hop], original=original)
        return (hop, flows[0]) if flows else None
    return None


def _transit_flow(lab: Lab, hosts: dict[str, Host], entry: tuple[str, Flow]) -> tuple[str, Flow | None] | None:
    """The pod's node and its entry, when kube-proxy sent the connection to a pod on another node.

    The entry is None when that node kept none (e.g. its conntrack table is full and dropped the SYN).
    """
    name, flow = entry
    pod = _host_by_ip(lab, flow.reply.src)
    if pod is None or pod.node is None or pod.node == name or pod.node not in hosts:
        return None
    flows = tcp_flows(hosts[pod.node], original=flow.reply.reversed())
    return pod.node, (flows[0] if flows else None)


def _host_by_ip(lab: Lab, ip: str):
    for h in lab.plan.hosts:
        if h.ip is not None and str(h.ip) == ip:
            return h
    return None


def _attempts(lab: Lab, syns: list[TracedPacket], packets: list[TracedPacket]) -> list[str]:
    """What became of each connect attempt (SYN) known only from the trace: its DNAT, and what answered.

    A connection refused by the pod leaves no conntrack entry (a RST to a SYN removes it at once), so the
    DNAT comes from the traced rule and the answer from the traced RST of that pod address.
    """
    lines = []
    for i, syn in enumerate(syns, 1):
        f = syn.first
        sent = f"{f.get('SRC')}:{f.get('SPORT')} -> {f.get('DST')}:{f.get('DPORT')}"
        stopped = _where_it_stopped(syn)
        dnat = _dnat_rule(syn)
        if stopped or not dnat:
            lines.append(f"attempt {i}: {sent}: {stopped or 'no DNAT rule matched'}.")
            continue
        ip, _, port = dnat.rpartition(":")
        pod = _host_by_ip(lab, ip)
        answers = [p for p in packets if _is_answer(p) and (p.first.get("SRC"), p.first.get("SPORT")) == (ip, port)]
        if any("RST" in a.first.flags for a in answers):
            answer = "that address answered with a RST: nothing listens there (the pod's server is down)"
        elif answers:
            answer = "it answered (SYN-ACK)"
        else:
            answer = "no answer came back"
        lines.append(f"attempt {i}: {sent}, DNAT to {pod.name + ' ' if pod else ''}{dnat}: {answer}.")
    return lines


def _no_instance(lab: Lab, elb: str) -> str:
    """Why an ELB node had nowhere to send a connection: its health view of the instances it knows."""
    try:
        view = instance_health(show_stat(lab.backend.elb_stats_socket(lab, elb)))
    except LabError as exc:
        return f"It had no instance to send to (its health view is unreadable: {exc})."
    states = ", ".join(
        f"{name} {v['state']} ({v['status']}, last check {v['check'] or '-'})" for name, v in view.items()
    )
    return (
        f"It had no instance to send to: every instance it knows failed its health check, so it closed the "
        f"client's connection at once. Its view: {states or 'no instances'}."
    )


def _is_syn(p: TracedPacket) -> bool:
    return "SYN" in p.first.flags and "ACK" not in p.first.flags


def _is_answer(p: TracedPacket) -> bool:
    return "RST" in p.first.flags or ("SYN" in p.first.flags and "ACK" in p.first.flags)


def _select(packets: list[TracedPacket], t: Tuple, want) -> list[TracedPacket]:
    return [p for p in packets if want(p) and p.is_flow(t.src, t.sport, t.dst, t.dport)]


def _rules(packet: TracedPacket, deltas: dict[tuple[str, str, str], int] | None = None) -> list[dict[str, Any]]:
    """The rules the packet matched, in order, in plain words, with each KUBE-* rule's counter delta over the trace."""
    out = []
    for step in packet.rules():
        if step.kind == "rule":
            meaning = describe_rule(step.rule) if step.rule else ""
        else:
            meaning = f"end of {step.chain}: {step.verdict.lower()} (no rule decided)"
        prefix = f"-A {step.chain} "
        key = (step.table, step.chain, step.rule[len(prefix) :] if step.rule.startswith(prefix) else step.rule)
        out.append(
            {
                "table": step.table,
                "chain": step.chain,
                "rule": step.rule,
                "verdict": step.verdict + (f" {step.target}" if step.target else ""),
                "meaning": meaning,
                "counter_delta": (deltas or {}).get(key),
            }
        )
    return out


def _chains(packet: TracedPacket) -> list[str]:
    """KUBE-* chains the packet went through, in order (a chain counts when a rule in it matched or led to it)."""
    seen: list[str] = []
    for step in packet.rules():
        for chain in (step.chain, step.target):
            if chain.startswith("KUBE-") and chain not in seen:
                seen.append(chain)
    return seen


def _dnat_rule(packet: TracedPacket) -> str | None:
    for step in packet.rules():
        words = step.rule.split()
        if "DNAT" in words and "--to-destination" in words:
            return words[words.index("--to-destination") + 1]
    return None


def _masqueraded(packet: TracedPacket) -> bool:
    return any("MASQUERADE" in step.rule.split() for step in packet.rules())


def _where_it_stopped(packet: TracedPacket, host: Host | None = None, tracked: bool = False) -> str | None:
    """Plain words for a SYN that did not get through this node, or None if it did.

    `tracked`: conntrack has an entry for it, so an empty trace cannot mean conntrack dropped it (the rules are
    then invisible to nftables tracing: iptables-legacy).
    """
    rules = packet.rules()
    if not rules and tracked:
        return None
    if not rules:
        why = (
            "the SYN arrived but never reached the nat table: conntrack dropped it before any rule, which is "
            "what a full conntrack table does"
        )
        return why + (f" ({_conntrack_now(host)})" if host is not None else "")
    last = rules[-1]
    if last.verdict == "DROP":
        return f"dropped by {last.table} {last.chain}: {describe_rule(last.rule) if last.rule else 'policy DROP'}"
    return None


def _conntrack_now(host: Host) -> str:
    try:
        stats, fill = toolbox.conntrack_stats(host), toolbox.conntrack_fill(host)
    except (LabError, ValueError) as exc:
        return f"conntrack -S unreadable: {exc}"
    full = f"{fill['count']} of {fill['max']} entries" if fill.get("max") else "table size unknown"
    return f"`conntrack -S` drop={stats.get('drop', 0)}; table {full}"


def _assemble(
    lab: Lab,
    service: str,
    via: str,
    tgt: rpc.Target,
    attempt: _Attempt,
    log_line: elblog.ElbLogLine | None,
    entry: tuple[str, Flow] | None,
    transit: tuple[str, Flow | None] | None,
    packets: dict[str, list[TracedPacket]],
    hosts_by_name: dict[str, Host],
    deltas: Counters,
) -> TraceResult:
    topo, plan = lab.topology, lab.plan
    svc = topo.service(service)
    n = f" -n {lab.name}"
    hops: list[Hop] = []
    summary: dict[str, Any] = {
        "client": f"{attempt.local[0]}:{attempt.local[1]}",
        "address": f"{tgt.ip}:{tgt.port}",
        "elb_node": tgt.hop if via == "elb" else None,
        "instance": None,
        "chains": [],
        "dnat_to": None,
        "snat": None,
        "snat_to": None,
        "pod": None,
        "pod_node": None,
        "pod_az": None,
        "cross_az": False,
        "connect_ms": attempt.connect_ms,
        "other_syns_left_out": 0,
        "azs": [az.name for az in topo.azs],
    }
    ours: set[int] = set()

    # 1. the client
    src = attempt.source
    where = f"{src.az}" if src.az else ("client VPC" if src.role == "client" else "")
    client = Hop(
        "client",
        src.name,
        src.az,
        f"client {src.name} ({src.ip}, {where or src.role})",
        evidence={"local": summary["client"], "dest": summary["address"], "connect_ms": attempt.connect_ms},
        see=[f"lab exec {src.name}{n} -- ss -tn"],
        address=str(src.ip or attempt.local[0]),
    )
    dest_what = (
        f"ELB node {tgt.hop}'s listener :{tgt.port} for {service}"
        if via == "elb"
        else f"node {tgt.hop}'s NodePort {tgt.port} for {service} (no ELB)"
    )
    client.says.append(
        f"opens a TCP connection from {attempt.local[0]}:{attempt.local[1]} to {tgt.ip}:{tgt.port}, {dest_what}."
    )
    if src.role == "client":
        client.says.append("It is routed through the VPC peering (rt-client -> rt-cluster); nothing rewrites it.")
    if attempt.connect_ms is not None:
        client.says.append(f"connect() took {attempt.connect_ms:.2f} ms.")
    hops.append(client)

    # 2. the ELB node (a proxy: two separate TCP connections)
    instance = entry[0] if entry else (tgt.hop if via == "node" else None)
    if via == "elb":
        elb_spec = next(e for e in topo.elb_nodes if e.name == tgt.hop)
        known = [x.name for x in topo.elb_targets(elb_spec)]
        hop = Hop("elb", tgt.hop, elb_spec.az, f"ELB node {tgt.hop} ({elb_spec.az})", address=f"{tgt.ip}:{tgt.port}")
        hop.says.append(
            f"accepts the client's connection on listener :{tgt.port} and opens a second, separate TCP connection "
            f"to an instance's NodePort {svc.node_port}: the pod will never see the client's address."
        )
        hop.says.append(
            f"It picks instances by round robin among those it knows: {', '.join(known)} "
            f"(cross-zone load balancing {'on' if topo.elb.cross_zone else 'off: its own AZ only'})."
        )
        if log_line is not None:
            instance = instance or (log_line.server if log_line.server in known else None)
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
                hop.says.append(_no_instance(lab, tgt.hop))
        else:
            hop.says.append("No log line for this connection appeared (HAProxy logs a session when it ends).")
        if entry is not None:
            hop.says.append(f"Its connection to the instance: {entry[1].original} (from conntrack on {entry[0]}).")
            hop.evidence["backend_connection"] = str(entry[1].original)
        hop.see.append(
            f"grep '{attempt.local[0]}:{attempt.local[1]} ' {lab.state.path('logs', tgt.hop + '.haproxy.log')}"
        )
        hops.append(hop)
    summary["instance"] = instance

    # 3. the instance: kube-proxy's rules and conntrack
    failure: str | None = None
    if instance is not None:
        node_spec = topo.node(instance)
        hop = Hop("node", instance, node_spec.az, f"instance {instance} ({node_spec.az}): kube-proxy")
        hop.address = f"{plan.ip(instance)}:{svc.node_port}"
        flow = entry[1] if entry else None
        node_packets = packets.get(instance, [])
        later: list[str] = []  # what became of connect attempts known only from the trace
        if flow is not None:
            syns = _select(node_packets, flow.original, _is_syn)
        elif via == "node":
            first = Tuple(attempt.local[0], attempt.dest[0], attempt.local[1], attempt.dest[1])
            syns = _select(node_packets, first, _is_syn)
            later = _attempts(lab, syns[:1], node_packets) if syns and attempt.error else []
        else:
            elb_ip = str(plan.ip(tgt.hop))
            syns = [
                p
                for p in node_packets
                if _is_syn(p) and p.first.get("SRC") == elb_ip and p.first.get("DPORT") == str(svc.node_port)
            ]
            if syns:
                checks_here = svc.node_port == topo.health_check_port
                hop.says.append(
                    f"No answer came back, so the ELB node's connection is not known by its ports: these are all "
                    f"{len(syns)} SYNs from {tgt.hop} to NodePort {svc.node_port} during the trace"
                    + (
                        " (health checks use the same port and may be among them)."
                        if checks_here
                        else f" (health checks go to port {topo.health_check_port}: these are its connect attempts)."
                    )
                )
                later = _attempts(lab, syns, packets.get(instance, []))
        ours.update(id(p) for p in syns)
        if syns:
            syn = syns[0]  # the first SYN went through the nat rules; retransmissions only meet conntrack's entry
            hop.says.append(f"receives the SYN {syn.first.summary()} on {syn.first.get('IN') or 'lo'}.")
            if len(syns) > 1 and (flow is not None or via == "node"):
                hop.says.append(
                    f"The SYN arrived {len(syns)} times: the client retransmitted it (no answer in time; TCP "
                    "retries after about 1 s, 3 s, 7 s ...)."
                )
            hop.rules = _rules(syn, deltas.get(instance))
            chains = _chains(syn)
            summary["chains"] = chains
            if chains:
                hop.says.append(f"It goes through {' -> '.join(chains)} (every matching rule below, in order).")
            hop.says += later
            stopped = _where_it_stopped(syn, hosts_by_name.get(instance), tracked=flow is not None)
            if not syn.rules() and flow is not None:
                hop.says.append(
                    "The trace saw no rule here (rules of the iptables-legacy backend are invisible to nftables "
                    "tracing); conntrack below shows what they did."
                )
            if stopped:
                hop.says.append(f"It stops here: {stopped}.")
                hop.problem = True
                failure = failure or f"{instance}: {stopped}"
            dnat = _dnat_rule(syn)
            if dnat:
                summary["dnat_to"] = dnat
            hop.evidence["syn"] = syn.to_json()
        elif flow is None:
            hop.says.append("No SYN of this connection was traced here.")
        if flow is not None:
            pod_host = _host_by_ip(lab, flow.reply.src)
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
        elif not hop.problem and attempt.error:
            hop.says.append("conntrack has no entry known to be this connection's on this node.")
            hop.problem = True
        hop.see.append(f"lab exec {instance}{n} -- iptables-save -c -t nat | grep -E 'KUBE-(NODEPORTS|EXT|SVC|SEP)'")
        hops.append(hop)

    # 4. the pod's node, when kube-proxy sent the connection across
    if transit is not None and entry is not None:
        name, flow = transit
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
        syns = _select(packets.get(name, []), sent, _is_syn)
        ours.update(id(p) for p in syns)
        if syns:
            hop.rules = _rules(syns[0], deltas.get(name))
            hop.evidence["syn"] = syns[0].to_json()
            stopped = _where_it_stopped(syns[0], hosts_by_name.get(name), tracked=flow is not None)
            if stopped:
                hop.says.append(f"It stops here: {stopped}.")
                hop.problem = True
                failure = failure or f"{name}: {stopped}"
            else:
                hop.says.append(
                    "No KUBE-* rule rewrites it here (it is not addressed to a service or a NodePort): "
                    "it is forwarded to the pod's bridge cbr0 as it is."
                )
        if flow is not None:
            hop.says.append(
                f"conntrack here has its own entry, without NAT: original {flow.original}, reply {flow.reply}."
            )
            hop.evidence["conntrack"] = flow.to_json()
            hop.see.append(f"lab exec {name}{n} -- conntrack -L -p tcp --orig-port-src {flow.original.sport}")
        else:
            hop.says.append("conntrack here has no entry for it.")
            hop.problem = True
        summary["cross_az"] = summary["cross_az"] or crossed
        hops.append(hop)

    # 5. the pod
    who = attempt.who
    if who:
        pod_az = who.get("az")
        summary.update(pod=who["pod"], pod_node=who["node"], pod_az=pod_az)
        hop = Hop("pod", who["pod"], pod_az, f"pod {who['pod']} on {who['node']} ({pod_az})")
        hop.address = f"{who['pod_ip']}:{svc.port}"
        peer = f"{who['client_ip']}:{who['client_port']}"
        hop.says.append(f"The Thrift server at {who['pod_ip']}:{svc.port} answers whoami.")
        peer_host = _host_by_ip(lab, who["client_ip"])
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
        hop.see.append(f"lab call {service} whoami{n}")
        hops.append(hop)
        if entry is not None:
            summary["cross_az"] = summary["cross_az"] or (pod_az != topo.node(entry[0]).az)

    elif entry is not None:
        pod_host = _host_by_ip(lab, entry[1].reply.src)
        if pod_host is not None and pod_host.role == "pod":
            summary.update(pod=pod_host.name, pod_node=pod_host.node, pod_az=pod_host.az)
            hop = Hop("pod", pod_host.name, pod_host.az, f"pod {pod_host.name} on {pod_host.node} ({pod_host.az})")
            hop.address = f"{entry[1].reply.src}:{entry[1].reply.sport}"
            if any(h.problem for h in hops):
                hop.says.append("kube-proxy chose this pod, but the connection never reached it (see above).")
            else:
                hop.says.append(f"kube-proxy sent the connection here, but no answer came back ({attempt.error}).")
            hop.problem = True
            hops.append(hop)

    # 6. the way back
    answers = _select(packets.get(entry[0], []), entry[1].reply, _is_answer) if entry is not None else []
    if entry is not None and (answers or who):
        name, flow = entry
        hop = Hop("reply", name, topo.node(name).az, "the reply path")
        ours.update(id(p) for p in answers)
        hop.says.append(
            f"The pod answers {flow.reply} (to the address it saw). "
            + (f"It goes back through {transit[0]}, which only forwards it. " if transit else "")
            + f"On {name} conntrack recognises the reply and undoes both rewrites: it leaves as "
            f"{flow.original.reversed()}."
        )
        if answers:
            ans = answers[0]
            hop.rules = _rules(ans, deltas.get(name))
            accept = [r for r in hop.rules if r["verdict"] == "ACCEPT"]
            hop.says.append(
                f"The {ans.first.tcp_flags} skips the nat table (only a connection's first packet is NATed by rules)"
                + (f"; {accept[-1]['meaning']}." if accept else ".")
            )
            hop.evidence["answer"] = ans.to_json()
        if via == "elb":
            hop.says.append(f"{tgt.hop} relays the pod's answer on the client's own connection to {src.name}.")
        hops.append(hop)

    summary["other_syns_left_out"] = sum(
        1 for plist in packets.values() for p in plist if _is_syn(p) and id(p) not in ours
    )
    ok = attempt.error is None
    error = attempt.error
    if not ok and failure:
        error = f"{attempt.error}; {failure}"
    return TraceResult(lab.name, service, via, ok, error, hops, summary)
