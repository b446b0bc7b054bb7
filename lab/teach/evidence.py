"""Gather a trace's evidence: send one real connection through a running lab and read, from independent sources,
what it left behind. All of the trace's I/O is here; lab.teach.hops tells the story from the record.

The sources, so they check one another:
- the client's own socket (source port, connect time) and the pod's whoami answer (which pod, on which node
  and AZ, and the peer address the pod saw: SNAT shows there);
- the ELB node's connection log (HAProxy tcplog: the instance it chose, timers, how the session ended);
- nftrace on every node the packet may cross (which KUBE-* rules the SYN and the SYN-ACK matched), and the
  per-rule packet counters of those rules before and after;
- the conntrack entry on those nodes (original and reply tuples: DNAT to which pod, SNAT or not), and each
  node's conntrack table after the connection.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from lab import rpc, toolbox
from lab.errors import LabError
from lab.haproxy_stats import instance_health, show_stat
from lab.hosts import Host
from lab.lab import Lab
from lab.teach import elblog
from lab.teach.flows import Flow, Tuple, tcp_flows
from lab.teach.nftrace import capture_many
from lab.teach.tracedata import Attempt, Counters, Evidence

T = TypeVar("T")
R = TypeVar("R")


def gather(lab: Lab, service: str, tgt: rpc.Target, timeout: float = 5.0) -> Evidence:
    """Send one connection (a whoami RPC) to `tgt` and record everything it left behind."""
    topo = lab.topology
    svc = topo.service(service)
    via = tgt.via
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
        monitor = {name: cap.lines() for name, cap in captures.items()}
        after = _counters(hosts)
    deltas = {
        name: {key: n - before.get(name, {}).get(key, 0) for key, n in counts.items()} for name, counts in after.items()
    }
    elb_health = _elb_health(lab, tgt.hop) if log_line is not None and log_line.server == "<NOSRV>" else None
    return Evidence(
        lab=lab.name,
        topology=topo,
        service=service,
        via=via,
        hop=tgt.hop,
        target=(tgt.ip, tgt.port),
        attempt=attempt,
        log_path=str(elb_log) if elb_log else "",
        log_line=log_line,
        entry=entry,
        transit=transit,
        monitor=monitor,
        deltas=deltas,
        conntrack=_conntrack_tables(hosts),
        elb_health=elb_health,
    )


def _open(source: Host, dest: tuple[str, int], timeout: float) -> tuple[socket.socket | None, Attempt]:
    """Connect from inside `source`, bound first so the source port is known even if the connect fails."""

    def work() -> tuple[socket.socket | None, Attempt]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.bind(("0.0.0.0", 0))
        attempt = Attempt(source=source.name, local=(source.ip or "0.0.0.0", s.getsockname()[1]), dest=dest)
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


def _whoami(sock: socket.socket, attempt: Attempt, timeout: float) -> None:
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


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
        return list(pool.map(fn, items))


def _counters(hosts: dict[str, Host]) -> Counters:
    """Per-rule packet counters of the KUBE-* chains (iptables-save -c) on every node, read in parallel."""
    names = list(hosts)

    def read(name: str) -> dict[tuple[str, str, str], int]:
        try:
            return {(r.table, r.chain, r.rule): r.packets for r in toolbox.iptables_counters(hosts[name])}
        except (LabError, ValueError):
            return {}

    return dict(zip(names, _parallel(read, names), strict=True))


def _conntrack_tables(hosts: dict[str, Host]) -> dict[str, dict[str, Any]]:
    """Each node's `conntrack -S` and table fill after the connection (a full table explains a lost SYN)."""
    names = list(hosts)

    def read(name: str) -> dict[str, Any]:
        try:
            return {"stats": toolbox.conntrack_stats(hosts[name]), "fill": toolbox.conntrack_fill(hosts[name])}
        except (LabError, ValueError) as exc:
            return {"error": str(exc)}

    return dict(zip(names, _parallel(read, names), strict=True))


def _elb_health(lab: Lab, elb: str) -> dict[str, Any]:
    """The ELB node's health view of its instances (why it had none to send to)."""
    try:
        return {"view": instance_health(show_stat(lab.backend.elb_stats_socket(lab, elb)))}
    except LabError as exc:
        return {"error": str(exc)}


def _entry_flow(
    lab: Lab, hosts: dict[str, Host], attempt: Attempt, node_port: int, via: str, hop: str
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
    pod = next((h for h in lab.plan.hosts if h.ip is not None and str(h.ip) == flow.reply.src), None)
    if pod is None or pod.node is None or pod.node == name or pod.node not in hosts:
        return None
    flows = tcp_flows(hosts[pod.node], original=flow.reply.reversed())
    return pod.node, (flows[0] if flows else None)
