"""The topology file: what the lab's path looks like (VPCs, AZs, ELB, nodes, services, kube-proxy). No I/O."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from lab.models.common import WEEK, DurationIn, Int, LabName, Name, Strict, Text, shown

NODEPORT_RANGE = (30000, 32767)
# Every node and pod is a network namespace with its own processes on this one machine: the limits keep a lab
# (and `lab up --dry-run`) within what one machine builds in minutes. The benchmarks' largest lab has 50 nodes.
MAX_NODES_PER_AZ = 50
MAX_NODES = 60
MAX_REPLICAS = 100
MAX_PODS = 100
MAX_SERVICES = 20
HAPROXY_MAXCONN = 8000  # the ELB nodes' global maxconn (lab.render.haproxy)
CONNTRACK_LIMIT = 1 << 24  # nf_conntrack_max above 16M entries is beyond any node this lab emulates
LEGACY_UNTIL_MINOR = 11  # kube-proxy 1.5-1.11 has the legacy layout (DOMAIN: "Legacy (~1.5-1.11)")


def _az_name(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"[a-z0-9-]{1,24}", value):
        return value
    raise ValueError(f"an AZ name is 1-24 lowercase letters, digits or '-', e.g. us-east-1a; got {shown(value)}")


def _kubernetes_version(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"1\.\d{1,2}(\.\d{1,3})?", value):
        return value
    raise ValueError(f"a Kubernetes version is 1.MINOR or 1.MINOR.PATCH, e.g. 1.28.0 (quote it); got {shown(value)}")


def _cidr(value: object) -> object:
    # ipaddress takes an integer (or a YAML true) as a /32 network: a CIDR block is written as text
    if isinstance(value, str | IPv4Network):
        return value
    raise ValueError(f"expected a CIDR block such as 10.0.0.0/16, got {shown(value)}")


Cidr = Annotated[IPv4Network, BeforeValidator(_cidr)]
AzName = Annotated[str, Field(pattern=r"^[a-z0-9-]{1,24}$"), BeforeValidator(_az_name)]
KubernetesVersion = Annotated[str, Field(pattern=r"^1\.\d{1,2}(\.\d{1,3})?$"), BeforeValidator(_kubernetes_version)]


class Vpc(Strict):
    cidr: Cidr = Field(description="The VPC's CIDR block")


class Vpcs(Strict):
    client: Vpc = Vpc(cidr=IPv4Network("10.10.0.0/16"))
    cluster: Vpc = Vpc(cidr=IPv4Network("172.20.0.0/16"))


class Az(Strict):
    name: AzName = Field(description="AZ name, e.g. us-east-1a")
    nodes: Int(0, MAX_NODES_PER_AZ) | None = Field(None, description="Kubernetes nodes here (default: nodes_per_az)")
    elb_nodes: Int(0, 8) | None = Field(None, description="ELB nodes here (default: elb.nodes_per_az)")
    subnet: Cidr | None = Field(None, description="Subnet in the cluster VPC (default: carved from it)")

    @property
    def letter(self) -> str:
        return self.name[-1] if self.name[-1].isalpha() else self.name


class HealthCheck(Strict):
    target: str = Field(
        "TCP:first-listener",
        description="TCP:first-listener (what Kubernetes' AWS provider sets) or TCP:<port>",
    )
    # AWS's ranges for a Classic ELB health check (ConfigureHealthCheck in the ELB API reference).
    interval: DurationIn(5, 300) = Field(10.0, description="Between checks of one instance (AWS: 5-300 s)")
    timeout: DurationIn(2, 60) = Field(5.0, description="A check fails after this long (AWS: 2-60 s)")
    unhealthy_threshold: Int(2, 10) = Field(6, description="Failed checks in a row before out of service")
    healthy_threshold: Int(2, 10) = Field(2, description="Passed checks in a row before in service again")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str) -> str:
        if value == "TCP:first-listener" or re.fullmatch(r"TCP:\d{1,5}", value):
            if value != "TCP:first-listener" and not 1 <= int(value[4:]) <= 65535:
                raise ValueError("health check port must be 1-65535")
            return value
        raise ValueError("health check target must be TCP:first-listener or TCP:<port>")

    @model_validator(mode="after")
    def _timing(self) -> HealthCheck:
        if self.timeout >= self.interval:
            raise ValueError("health check timeout must be shorter than the interval (as on AWS)")
        return self


class Listener(Strict):
    port: Int(1, 65535) = Field(description="The ELB's listening port")
    service: Name = Field(description="The service this listener forwards to (its NodePort)")


class Elb(Strict):
    nodes_per_az: Int(0, 8) = Field(1, description="ELB nodes in each AZ (AWS scales this)")
    cross_zone: bool = Field(False, description="Off: an ELB node sends only to instances in its own AZ")
    idle_timeout: DurationIn(1, 4000) = Field(60.0, description="Idle connections are closed (AWS: 1-4000 s)")
    connect_timeout: DurationIn(0.1, 60) = Field(
        5.0, description="Backend connect timeout (AWS does not document it; the lab allows 100ms-60s)"
    )
    retries: Int(0, 10) = Field(3, description="Backend connect retries on errors, each to another instance")
    surge_queue: Int(0, 1024) = Field(
        1024, description="Requests queued when instances are saturated (AWS: at most 1,024)"
    )
    max_connections_per_instance: Int(1, HAPROXY_MAXCONN) | None = Field(
        None, description="Per-instance concurrent connections before the surge queue (default: none)"
    )
    health_check: HealthCheck = HealthCheck()
    listeners: list[Listener] = Field(min_length=1, max_length=MAX_SERVICES)


class Service(Strict):
    name: Name
    namespace: Name = "default"
    port: Int(1, 65535) = Field(9090, description="Thrift port on the pod (targetPort)")
    cluster_port: Int(1, 65535) | None = Field(None, description="Service port (default: port)")
    node_port: Int(*NODEPORT_RANGE) = Field(description="NodePort, 30000-32767")
    replicas: Int(0, MAX_REPLICAS) = 2
    external_traffic_policy: Literal["Cluster", "Local"] = "Cluster"
    placement: Literal["spread"] | list[Text(40)] = Field(
        "spread",
        max_length=MAX_REPLICAS,
        description="spread (least-loaded node first, like the scheduler) or a list of node names",
    )
    backlog: Int(1, 65535) = Field(128, description="The pods' listen backlog")

    @property
    def service_port(self) -> int:
        return self.cluster_port or self.port


class Conntrack(Strict):
    max: Int(1, CONNTRACK_LIMIT) | None = Field(
        None, description="kube-proxy --conntrack-max: a fixed nf_conntrack_max (else max_per_core x cores, min)"
    )
    max_per_core: Int(0, CONNTRACK_LIMIT) = Field(32768, description="kube-proxy --conntrack-max-per-core")
    min: Int(0, CONNTRACK_LIMIT) = Field(131072, description="kube-proxy --conntrack-min")
    # Up to a week: the kernel's own established default is 5 days.
    tcp_timeout_established: DurationIn(1, WEEK) = Field(86400.0, description="kube-proxy's default: 24h")
    tcp_timeout_close_wait: DurationIn(1, WEEK) = Field(3600.0, description="kube-proxy's default: 1h")
    tcp_timeout_time_wait: DurationIn(1, WEEK) = Field(
        120.0, description="The kernel's default; a quick run may shrink it to keep table occupancy in scale"
    )
    tcp_be_liberal: bool = False


class KubeProxy(Strict):
    flavour: Literal["legacy", "modern"] = Field(
        "modern", description="legacy: 1.5-era chains; modern: 1.28-era chains with the INVALID drop rule"
    )
    masquerade_random_fully: bool | None = Field(None, description="Default: true for modern, false for legacy")
    conntrack: Conntrack = Conntrack()

    @property
    def random_fully(self) -> bool:
        if self.masquerade_random_fully is not None:
            return self.masquerade_random_fully
        return self.flavour == "modern"


class Cluster(Strict):
    kubernetes_version: KubernetesVersion = Field("1.28.0", description="1.MINOR or 1.MINOR.PATCH, e.g. 1.28.0")
    pod_cidr: Cidr = Field(IPv4Network("100.96.0.0/11"), description="Cluster CIDR; each node gets a /24")
    node_pod_prefix: Int(16, 28) = Field(24, description="Prefix length of each node's pod CIDR")
    service_cidr: Cidr = IPv4Network("100.64.0.0/13")
    node_cores: Int(1, 512) = Field(2, description="Cores per node (sets kube-proxy's conntrack max)")

    @property
    def minor(self) -> int:
        return int(self.kubernetes_version.split(".")[1])


class ClientTier(Strict):
    name: Name = Field("apollo", description="The client application (the seed's 'apollo')")
    instances: Int(1, 20) = Field(1, description="Client hosts in the client VPC")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    az: str
    index: int  # position among all nodes, stable across runs


@dataclass(frozen=True)
class ElbNodeSpec:
    name: str
    az: str
    index: int


@dataclass(frozen=True)
class PodSpec:
    name: str
    service: str
    node: str
    index: int  # position among all pods


class Topology(Strict):
    """A lab: the client VPC, the cluster VPC with its AZs, one ELB and the Kubernetes services behind it."""

    name: LabName = Field("default", description="Default lab name (the lab name rule: 1-16 characters)")
    description: Text(500) = ""
    vpcs: Vpcs = Vpcs()
    azs: list[Az] = Field(min_length=1, max_length=6)
    nodes_per_az: Int(0, MAX_NODES_PER_AZ) = Field(
        1, description=f"Kubernetes nodes in each AZ (at most {MAX_NODES} in all)"
    )
    cluster: Cluster = Cluster()
    kube_proxy: KubeProxy = KubeProxy()
    elb: Elb
    services: list[Service] = Field(
        min_length=1, max_length=MAX_SERVICES, description=f"At most {MAX_PODS} replicas in all"
    )
    client: ClientTier = ClientTier()

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        _unique("AZ name", [az.name for az in self.azs])
        _unique("AZ letter", [az.letter for az in self.azs])
        _unique("service name", [s.name for s in self.services])
        _unique("NodePort", [s.node_port for s in self.services])
        _unique("ELB listener port", [lst.port for lst in self.elb.listeners])
        names = {s.name for s in self.services}
        for i, lst in enumerate(self.elb.listeners):
            if lst.service not in names:
                raise ValueError(
                    f"@elb.listeners[{i}].service: unknown service '{lst.service}' "
                    f"(services: {', '.join(sorted(names))})"
                )
        if not self.k8s_nodes:
            raise ValueError("the topology has no Kubernetes nodes (set nodes_per_az or azs[].nodes)")
        if not self.elb_nodes:
            raise ValueError("the ELB has no nodes (set elb.nodes_per_az or azs[].elb_nodes)")
        # Each node and pod is a namespace with its own processes on this one machine.
        if len(self.k8s_nodes) > MAX_NODES:
            raise ValueError(
                f"@nodes_per_az: {len(self.k8s_nodes)} Kubernetes nodes: a lab has at most {MAX_NODES} "
                "(lower nodes_per_az or azs[].nodes)"
            )
        replicas = sum(s.replicas for s in self.services)
        if replicas > MAX_PODS:
            raise ValueError(
                f"@services: {replicas} pods in all: a lab has at most {MAX_PODS} (lower services[].replicas)"
            )
        self._check_versions()
        node_names = {n.name for n in self.k8s_nodes}
        for si, svc in enumerate(self.services):
            if isinstance(svc.placement, list):
                unknown = [n for n in svc.placement if n not in node_names]
                if unknown:
                    raise ValueError(
                        f"@services[{si}].placement: unknown node '{unknown[0]}' "
                        f"(nodes: {', '.join(sorted(node_names))})"
                    )
                if len(svc.placement) != svc.replicas:
                    raise ValueError(
                        f"@services[{si}].placement: service '{svc.name}' has {svc.replicas} replicas but "
                        f"{len(svc.placement)} placements; give one node per replica"
                    )
        self._check_cidrs()
        return self

    def _check_versions(self) -> None:
        # The version is what the lab claims to be; the flavour is what it renders. Modern rules on a 1.5
        # cluster would show behaviour (the INVALID drop, --random-fully) that version never had.
        if self.kube_proxy.flavour == "modern" and self.cluster.minor <= LEGACY_UNTIL_MINOR:
            raise ValueError(
                f"@kube_proxy.flavour: modern renders kube-proxy 1.28's rules, but cluster.kubernetes_version is "
                f"{self.cluster.kubernetes_version} (legacy era, 1.5-1.{LEGACY_UNTIL_MINOR}); set "
                f"kube_proxy.flavour=legacy, or cluster.kubernetes_version=1.28.0 as well"
            )

    def _check_cidrs(self) -> None:
        blocks = {
            "vpcs.client.cidr": self.vpcs.client.cidr,
            "vpcs.cluster.cidr": self.vpcs.cluster.cidr,
            "cluster.pod_cidr": self.cluster.pod_cidr,
            "cluster.service_cidr": self.cluster.service_cidr,
        }
        items = list(blocks.items())
        for i, (name_a, a) in enumerate(items):
            for name_b, b in items[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(f"@{name_b}: {b} overlaps {name_a} {a}; pick disjoint CIDRs")
        subnets = self.az_subnets
        for az in self.azs:
            net = subnets[az.name]
            if not net.subnet_of(self.vpcs.cluster.cidr):
                raise ValueError(
                    f"@azs[{self.azs.index(az)}].subnet: subnet {net} of AZ {az.name} is not inside the "
                    f"cluster VPC {self.vpcs.cluster.cidr}"
                )
        nets = list(subnets.items())
        for i, (az_a, a) in enumerate(nets):
            for az_b, b in nets[i + 1 :]:
                if a.overlaps(b):
                    raise ValueError(f"subnets of AZ {az_a} ({a}) and AZ {az_b} ({b}) overlap")
        for az in self.azs:
            in_az = sum(1 for n in self.k8s_nodes if n.az == az.name)
            room = subnets[az.name].num_addresses - 2 - 16  # nodes start at .16 (see render.plan)
            if in_az > room:
                raise ValueError(
                    f"@azs[{self.azs.index(az)}]: subnet {subnets[az.name]} of AZ {az.name} "
                    f"is too small for {in_az} nodes"
                )
        pod_room = 2 ** (32 - self.cluster.node_pod_prefix) - 3  # network, cbr0, broadcast
        busiest = max((sum(1 for p in self.pods if p.node == n.name) for n in self.k8s_nodes), default=0)
        if busiest > pod_room:
            raise ValueError(
                f"a node would run {busiest} pods but its /{self.cluster.node_pod_prefix} pod CIDR holds {pod_room}"
            )
        need = len(self.k8s_nodes)
        have = 2 ** (self.cluster.node_pod_prefix - self.cluster.pod_cidr.prefixlen)
        if need + 1 > have:
            raise ValueError(
                f"cluster.pod_cidr {self.cluster.pod_cidr} has room for {have - 1} node pod CIDRs, need {need}"
            )
        if self.vpcs.client.cidr.prefixlen > 28:
            raise ValueError("@vpcs.client.cidr: too small; use /28 or larger")

    # --- derived inventory (pure, deterministic) ---

    @cached_property
    def az_subnets(self) -> dict[str, IPv4Network]:
        """Explicit subnets, else the VPC carved into equal blocks, AZ i taking block i+1 (like kops)."""
        vpc = self.vpcs.cluster.cidr
        bits = max(2, len(self.azs).bit_length())
        carved = list(vpc.subnets(prefixlen_diff=bits)) if vpc.prefixlen + bits <= 28 else []
        out = {}
        for i, az in enumerate(self.azs):
            if az.subnet is not None:
                out[az.name] = az.subnet
            elif i + 1 < len(carved):
                out[az.name] = carved[i + 1]
            else:
                raise ValueError(f"vpcs.cluster.cidr {vpc} is too small to carve a subnet for AZ {az.name}")
        return out

    @cached_property
    def k8s_nodes(self) -> list[NodeSpec]:
        nodes = []
        for az in self.azs:
            count = self.nodes_per_az if az.nodes is None else az.nodes
            for i in range(count):
                nodes.append(NodeSpec(name=f"node-{az.letter}{i + 1}", az=az.name, index=len(nodes)))
        return nodes

    @cached_property
    def elb_nodes(self) -> list[ElbNodeSpec]:
        out = []
        for az in self.azs:
            count = self.elb.nodes_per_az if az.elb_nodes is None else az.elb_nodes
            for i in range(count):
                out.append(ElbNodeSpec(name=f"elb-{az.letter}{i + 1}", az=az.name, index=len(out)))
        return out

    @cached_property
    def pods(self) -> list[PodSpec]:
        """Place replicas like the default scheduler: spread over AZs, then fewest pods, one replica per node."""
        load = {n.name: 0 for n in self.k8s_nodes}
        az_of = {n.name: n.az for n in self.k8s_nodes}
        order = [n.name for n in self.k8s_nodes]
        az_load = {az.name: 0 for az in self.azs}
        pods: list[PodSpec] = []
        for svc in self.services:
            used: set[str] = set()
            in_az = {az.name: 0 for az in self.azs}
            for r in range(svc.replicas):
                if isinstance(svc.placement, list):
                    node = svc.placement[r]
                else:
                    fresh = [n for n in order if n not in used] or order
                    node = min(fresh, key=lambda n: (in_az[az_of[n]], az_load[az_of[n]], load[n], order.index(n)))
                load[node] += 1
                az_load[az_of[node]] += 1
                in_az[az_of[node]] += 1
                used.add(node)
                pods.append(PodSpec(name=f"{svc.name}-{r}", service=svc.name, node=node, index=len(pods)))
        return pods

    def service(self, name: str) -> Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def node(self, name: str) -> NodeSpec:
        for node in self.k8s_nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def pods_of(self, service: str) -> list[PodSpec]:
        return [p for p in self.pods if p.service == service]

    @property
    def health_check_port(self) -> int:
        target = self.elb.health_check.target
        if target == "TCP:first-listener":
            return self.service(self.elb.listeners[0].service).node_port
        return int(target.split(":", 1)[1])

    def elb_targets(self, elb_node: ElbNodeSpec) -> list[NodeSpec]:
        """The instances an ELB node may send to (and so health-checks): its AZ's, or all with cross-zone."""
        if self.elb.cross_zone:
            return list(self.k8s_nodes)
        return [n for n in self.k8s_nodes if n.az == elb_node.az]

    @property
    def conntrack_max(self) -> int:
        """What kube-proxy would set nf_conntrack_max to on a node (max(maxPerCore x cores, min))."""
        ct = self.kube_proxy.conntrack
        if ct.max is not None:
            return ct.max
        return max(ct.max_per_core * self.cluster.node_cores, ct.min)


def _unique(what: str, values: list) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"duplicate {what} {v!r}")
        seen.add(v)


def all_cidrs(topology: Topology) -> dict[str, ipaddress.IPv4Network]:
    """Every address block the lab uses, by where it is declared (for checks against the host's routes)."""
    return {
        "vpcs.client.cidr": topology.vpcs.client.cidr,
        "vpcs.cluster.cidr": topology.vpcs.cluster.cidr,
        "cluster.pod_cidr": topology.cluster.pod_cidr,
        "cluster.service_cidr": topology.cluster.service_cidr,
    }
