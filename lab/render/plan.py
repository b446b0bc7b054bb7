"""The address plan: every host, bridge, link, address, route and sysctl the topology needs. Pure.

Shape of the network (as on AWS with kubenet, no overlay):

    client VPC                    |  cluster VPC
    apollo-N --[br-client]-- rt-client ==peering== rt-cluster --[br-<az>]-- elb-*, node-*
                                                   (routes: each node's pod CIDR via that node)
    node-*: cbr0 (pod CIDR .1) -- veth -- pod eth0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Literal

from lab.models.topology import Topology

Role = Literal["router", "client", "elb", "node", "pod"]

CLIENT_ROUTER = "rt-client"
CLUSTER_ROUTER = "rt-cluster"
PEERING = IPv4Network("169.254.100.0/30")  # link-local: never routed on any host network
POD_BRIDGE = "cbr0"  # kubenet's bridge name
ELB_HOST_OFFSET = 4  # ELB nodes at .5 .. .12 of an AZ subnet
NODE_HOST_OFFSET = 16  # Kubernetes nodes from .16
CLIENT_HOST_OFFSET = 10
SERVICE_IP_OFFSET = 16


@dataclass(frozen=True)
class HostPlan:
    name: str
    role: Role
    az: str | None = None
    vpc: Literal["client", "cluster"] | None = None
    ip: IPv4Address | None = None  # the host's main address
    node: str | None = None  # for pods: the node they run on
    service: str | None = None  # for pods: their service


@dataclass(frozen=True)
class Bridge:
    host: str
    name: str
    address: IPv4Interface | None


@dataclass(frozen=True)
class LinkEnd:
    host: str
    ifname: str
    address: IPv4Interface | None = None
    bridge: str | None = None  # enslave to this bridge (in the same host)


@dataclass(frozen=True)
class Link:
    """A veth pair. `a` is where it is created, `b` the peer end placed into another namespace."""

    name: str  # logical name used by faults: e.g. node-a1, peering, foo-0
    a: LinkEnd
    b: LinkEnd
    kind: Literal["uplink", "peering", "pod"]


@dataclass(frozen=True)
class Route:
    host: str
    dst: IPv4Network  # 0.0.0.0/0 for default
    via: IPv4Address


@dataclass(frozen=True)
class NetworkPlan:
    hosts: tuple[HostPlan, ...]
    bridges: tuple[Bridge, ...]
    links: tuple[Link, ...]
    routes: tuple[Route, ...]
    sysctls: tuple[tuple[str, str, str], ...]  # (host, key, value)
    gateways: dict[str, IPv4Address] = field(default_factory=dict)  # subnet name -> gateway
    subnets: dict[str, IPv4Network] = field(default_factory=dict)  # client, <az>
    pod_cidrs: dict[str, IPv4Network] = field(default_factory=dict)  # node -> pod CIDR
    cluster_ips: dict[str, IPv4Address] = field(default_factory=dict)  # service -> ClusterIP

    def host(self, name: str) -> HostPlan:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def ip(self, name: str) -> IPv4Address:
        ip = self.host(name).ip
        assert ip is not None, name
        return ip

    def by_role(self, role: Role) -> list[HostPlan]:
        return [h for h in self.hosts if h.role == role]

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)


# The kernel's defaults for conntrack's TCP state timeouts (seconds) that the topology does not model;
# kube-proxy sets ESTABLISHED and CLOSE_WAIT, the topology TIME_WAIT (Conntrack model).
CONNTRACK_TCP_DEFAULTS = {
    "syn_sent": 120,
    "syn_recv": 60,
    "fin_wait": 120,
    "last_ack": 30,
    "close": 10,
    "max_retrans": 300,
    "unacknowledged": 300,
}
# The kernel's defaults for the per-namespace socket timers the scenarios' connections can meet.
TCP_FIN_TIMEOUT = 60  # orphaned FIN_WAIT2
TCP_KEEPALIVE_TIME = 7200
TCP_KEEPALIVE_INTVL = 75
TCP_SYN_RETRIES = 6  # a connect gives up after 1+2+...+64 = 127 s
TCP_SYNACK_RETRIES = 5  # a half-open server connection (SYN_RECV) after 63 s


def _scaled(seconds: float, time_scale: float) -> str:
    return str(max(1, round(seconds * time_scale)))


def _scaled_retries(retries: int, time_scale: float) -> str:
    """The retry count whose give-up time comes nearest (by ratio) to the scaled one.

    SYN and SYN-ACK retransmits start at the initial RTO (1 s, fixed in the kernel) and double, so the
    count is the only knob: n retries give up after 2^(n+1) - 1 seconds.
    """
    target = ((2 ** (retries + 1)) - 1) * time_scale
    return str(min(range(1, retries + 1), key=lambda n: abs(math.log(((2 ** (n + 1)) - 1) / target))))


def conntrack_sysctls(topo: Topology, time_scale: float = 1.0) -> list[tuple[str, str]]:
    """A node's conntrack settings: kube-proxy's, and in a quick run every TCP state timeout scaled with the run.

    A quick run makes the ELB's timers and the phases `time_scale` times shorter; entries that kept their
    real lifetimes would outlive whole phases (a SYN_SENT entry: 120 s against a 36 s recovery) and decide
    verdicts that the full-scale run decides by the hypothesis.
    """
    ct = topo.kube_proxy.conntrack
    prefix = "net.netfilter.nf_conntrack_tcp_timeout_"
    out = [
        (prefix + "established", _scaled(ct.tcp_timeout_established, time_scale)),
        (prefix + "close_wait", _scaled(ct.tcp_timeout_close_wait, time_scale)),
        (prefix + "time_wait", _scaled(ct.tcp_timeout_time_wait, time_scale)),
    ]
    if time_scale != 1.0:  # at scale 1 the kernel's own defaults stand
        out += [(prefix + state, _scaled(seconds, time_scale)) for state, seconds in CONNTRACK_TCP_DEFAULTS.items()]
    out.append(("net.netfilter.nf_conntrack_tcp_be_liberal", "1" if ct.tcp_be_liberal else "0"))
    return out


def socket_sysctls(time_scale: float = 1.0) -> list[tuple[str, str]]:
    """In a quick run, the per-namespace TCP socket timers scaled with the run (none at scale 1: the defaults)."""
    if time_scale == 1.0:
        return []
    return [
        ("net.ipv4.tcp_fin_timeout", _scaled(TCP_FIN_TIMEOUT, time_scale)),
        ("net.ipv4.tcp_keepalive_time", _scaled(TCP_KEEPALIVE_TIME, time_scale)),
        ("net.ipv4.tcp_keepalive_intvl", _scaled(TCP_KEEPALIVE_INTVL, time_scale)),
        ("net.ipv4.tcp_syn_retries", _scaled_retries(TCP_SYN_RETRIES, time_scale)),
        ("net.ipv4.tcp_synack_retries", _scaled_retries(TCP_SYNACK_RETRIES, time_scale)),
    ]


def _ifname(candidate: str, fallback: str) -> str:
    return candidate if len(candidate) <= 15 else fallback


def build_plan(topo: Topology, time_scale: float = 1.0) -> NetworkPlan:
    """The plan of `topo`; `time_scale` < 1 (a quick run) also scales the kernel's per-namespace TCP timers."""
    hosts: list[HostPlan] = [
        HostPlan(CLIENT_ROUTER, "router", vpc="client"),
        HostPlan(CLUSTER_ROUTER, "router", vpc="cluster"),
    ]
    bridges: list[Bridge] = []
    links: list[Link] = []
    routes: list[Route] = []
    sysctls: list[tuple[str, str, str]] = []
    gateways: dict[str, IPv4Address] = {}
    subnets: dict[str, IPv4Network] = {}

    # Client VPC: one subnet (the VPC's first /24, or the whole VPC if smaller).
    client_vpc = topo.vpcs.client.cidr
    client_net = next(client_vpc.subnets(new_prefix=24)) if client_vpc.prefixlen < 24 else client_vpc
    client_gw = client_net.network_address + 1
    subnets["client"] = client_net
    gateways["client"] = client_gw
    bridges.append(Bridge(CLIENT_ROUTER, "br-client", IPv4Interface(f"{client_gw}/{client_net.prefixlen}")))
    for i in range(topo.client.instances):
        name = f"{topo.client.name}-{i + 1}"
        ip = client_net.network_address + CLIENT_HOST_OFFSET + i
        hosts.append(HostPlan(name, "client", vpc="client", ip=ip))
        links.append(
            Link(
                name,
                LinkEnd(CLIENT_ROUTER, _ifname(name, f"c{i}"), bridge="br-client"),
                LinkEnd(name, "eth0", IPv4Interface(f"{ip}/{client_net.prefixlen}")),
                "uplink",
            )
        )
        routes.append(Route(name, IPv4Network("0.0.0.0/0"), client_gw))

    # VPC peering: a routed link between the two VPC routers.
    peer_a, peer_b = list(PEERING.hosts())[:2]
    links.append(
        Link(
            "peering",
            LinkEnd(CLIENT_ROUTER, "peering", IPv4Interface(f"{peer_a}/{PEERING.prefixlen}")),
            LinkEnd(CLUSTER_ROUTER, "peering", IPv4Interface(f"{peer_b}/{PEERING.prefixlen}")),
            "peering",
        )
    )
    routes.append(Route(CLIENT_ROUTER, topo.vpcs.cluster.cidr, peer_b))
    routes.append(Route(CLUSTER_ROUTER, client_vpc, peer_a))

    # Cluster VPC: one subnet (bridge) per AZ in the VPC router.
    for az in topo.azs:
        net = topo.az_subnets[az.name]
        gw = net.network_address + 1
        subnets[az.name] = net
        gateways[az.name] = gw
        bridges.append(
            Bridge(CLUSTER_ROUTER, _ifname(f"br-{az.name}", f"br-{az.letter}"), IPv4Interface(f"{gw}/{net.prefixlen}"))
        )
        capacity = net.num_addresses - 2
        azn = [n for n in topo.k8s_nodes if n.az == az.name]
        if NODE_HOST_OFFSET + len(azn) > capacity:
            raise ValueError(f"subnet {net} of AZ {az.name} is too small for {len(azn)} nodes")

    az_bridge = {b.address.network: b.name for b in bridges if b.host == CLUSTER_ROUTER and b.address}

    def attach(name: str, role: Role, az: str, offset: int, fallback: str) -> IPv4Address:
        net = subnets[az]
        ip = net.network_address + offset
        hosts.append(HostPlan(name, role, az=az, vpc="cluster", ip=ip))
        links.append(
            Link(
                name,
                LinkEnd(CLUSTER_ROUTER, _ifname(name, fallback), bridge=az_bridge[net]),
                LinkEnd(name, "eth0", IPv4Interface(f"{ip}/{net.prefixlen}")),
                "uplink",
            )
        )
        routes.append(Route(name, IPv4Network("0.0.0.0/0"), gateways[az]))
        return ip

    per_az_count: dict[str, int] = {}
    for elb in topo.elb_nodes:
        k = per_az_count.get("elb" + elb.az, 0)
        per_az_count["elb" + elb.az] = k + 1
        attach(elb.name, "elb", elb.az, ELB_HOST_OFFSET + 1 + k, f"e{elb.index}")

    pod_blocks = topo.cluster.pod_cidr.subnets(new_prefix=topo.cluster.node_pod_prefix)
    next(pod_blocks)  # kubenet leaves the first block unused
    pod_cidrs: dict[str, IPv4Network] = {}
    for node in topo.k8s_nodes:
        k = per_az_count.get("node" + node.az, 0)
        per_az_count["node" + node.az] = k + 1
        ip = attach(node.name, "node", node.az, NODE_HOST_OFFSET + k, f"n{node.index}")
        pod_cidr = next(pod_blocks)
        pod_cidrs[node.name] = pod_cidr
        cbr0 = pod_cidr.network_address + 1
        bridges.append(Bridge(node.name, POD_BRIDGE, IPv4Interface(f"{cbr0}/{pod_cidr.prefixlen}")))
        routes.append(Route(CLUSTER_ROUTER, pod_cidr, ip))  # the VPC route table entry kubenet adds
        sysctls.append((node.name, "net.ipv4.ip_forward", "1"))
        sysctls += [(node.name, key, value) for key, value in conntrack_sysctls(topo, time_scale)]

    # Pods: eth0 in the pod, a veth in the node on cbr0.
    on_node: dict[str, int] = {}
    for pod in topo.pods:
        k = on_node.get(pod.node, 0)
        on_node[pod.node] = k + 1
        cidr = pod_cidrs[pod.node]
        if k + 2 >= cidr.num_addresses - 1:
            raise ValueError(f"pod CIDR {cidr} of {pod.node} is too small for its pods")
        ip = cidr.network_address + 2 + k
        hosts.append(
            HostPlan(
                pod.name, "pod", az=topo.node(pod.node).az, vpc="cluster", ip=ip, node=pod.node, service=pod.service
            )
        )
        links.append(
            Link(
                pod.name,
                LinkEnd(pod.node, _ifname(f"veth-{pod.name}", f"veth{pod.index}"), bridge=POD_BRIDGE),
                LinkEnd(pod.name, "eth0", IPv4Interface(f"{ip}/{cidr.prefixlen}")),
                "pod",
            )
        )
        routes.append(Route(pod.name, IPv4Network("0.0.0.0/0"), cidr.network_address + 1))

    # Sockets live in the clients, the ELB nodes and the pods: their TCP timers run at the lab's scale too.
    for host in hosts:
        if host.role in ("client", "elb", "pod"):
            sysctls += [(host.name, key, value) for key, value in socket_sysctls(time_scale)]

    for router in (CLIENT_ROUTER, CLUSTER_ROUTER):
        sysctls.append((router, "net.ipv4.ip_forward", "1"))
        # Same-AZ pod routes leave by the interface they came in on: no ICMP redirects.
        sysctls.append((router, "net.ipv4.conf.all.send_redirects", "0"))
        sysctls.append((router, "net.ipv4.conf.default.send_redirects", "0"))

    cluster_ips = {
        svc.name: topo.cluster.service_cidr.network_address + SERVICE_IP_OFFSET + i
        for i, svc in enumerate(topo.services)
    }
    return NetworkPlan(
        hosts=tuple(hosts),
        bridges=tuple(bridges),
        links=tuple(links),
        routes=tuple(routes),
        sysctls=tuple(sysctls),
        gateways=gateways,
        subnets=subnets,
        pod_cidrs=pod_cidrs,
        cluster_ips=cluster_ips,
    )


def describe(plan: NetworkPlan) -> str:
    """A human-readable dump of the plan (used by --dry-run and golden tests)."""
    lines = ["# hosts"]
    for h in plan.hosts:
        extra = f" az={h.az}" if h.az else ""
        extra += f" node={h.node}" if h.node else ""
        lines.append(f"host {h.name} role={h.role}{extra} ip={h.ip or '-'}")
    lines.append("# bridges")
    lines += [f"bridge {b.host}/{b.name} {b.address or ''}".rstrip() for b in plan.bridges]
    lines.append("# links (veth)")
    for link in plan.links:
        a = (
            f"{link.a.host}/{link.a.ifname}"
            + (f"@{link.a.bridge}" if link.a.bridge else "")
            + (f" {link.a.address}" if link.a.address else "")
        )
        b = (
            f"{link.b.host}/{link.b.ifname}"
            + (f"@{link.b.bridge}" if link.b.bridge else "")
            + (f" {link.b.address}" if link.b.address else "")
        )
        lines.append(f"link {link.name} ({link.kind}): {a} <-> {b}")
    lines.append("# routes")
    lines += [f"route {r.host}: {'default' if r.dst.prefixlen == 0 else r.dst} via {r.via}" for r in plan.routes]
    lines.append("# sysctls")
    lines += [f"sysctl {h}: {k}={v}" for h, k, v in plan.sysctls]
    lines.append("# service cluster IPs")
    lines += [f"clusterip {svc} {ip}" for svc, ip in plan.cluster_ips.items()]
    return "\n".join(lines) + "\n"
