"""Render kube-proxy's iptables rules for one node as iptables-restore text, legacy or modern era. Pure.

Two eras, picked by `topology.kube_proxy.flavour`:

* legacy: kube-proxy 1.5 (`pkg/proxy/iptables/proxier.go` at v1.5.x) plus the kubelet's own chains of that
  time (KUBE-MARK-DROP in nat, KUBE-FIREWALL in filter). KUBE-NODEPORTS marks for masquerade and jumps to
  KUBE-SVC-x (Local policy: KUBE-XLB-x); probabilities are printed with `%0.5f`; no INVALID drop rule.
* modern: kube-proxy 1.28 (same file at v1.28.x): KUBE-NODEPORTS -> KUBE-EXT-x -> KUBE-SVC-x / KUBE-SVL-x,
  the filter chains KUBE-FORWARD, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL, probabilities
  printed with `%0.10f`.

The text is what kube-proxy feeds to `iptables-restore --noflush`, not what `iptables-save` prints back:
iptables-save reorders matches, drops the `/32` default, shows marks as `0x4000/0x4000` and probabilities
with 11 decimals after the kernel's fixed-point rounding (0.33333 comes back as 0.33332999982).

Like kube-proxy, the output is in two parts: `jumps` hooks the KUBE-* chains from the built-in chains
(kube-proxy does this with `iptables -I`, once); `chains` declares (so flushes) and refills every KUBE-* chain
on each sync. Services are rendered in topology order (real kube-proxy walks a Go map, so its order between
services varies from sync to sync); endpoints are sorted as the API server / kube-proxy of the era sort them.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from lab.models.topology import NODEPORT_RANGE, Service, Topology
from lab.render.plan import NetworkPlan

PORT_NAME = "thrift"  # the Service port name; part of every chain hash and comment
PROTOCOL = "tcp"  # kube-proxy lower-cases the protocol before hashing and in `-m tcp -p tcp`

MASQ_BIT = 14  # --iptables-masquerade-bit default
DROP_BIT = 15  # kubelet --iptables-drop-bit default
# Both eras format the mark with Go's "%#08x": eight zero-padded hex digits after 0x.
MASQ_MARK = f"0x{1 << MASQ_BIT:08x}"
DROP_MARK = f"0x{1 << DROP_BIT:08x}"

NODEPORTS_LAST_COMMENT = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"

# Match fragments kube-proxy repeats ("-m tcp" comes before "-p tcp" in its output, in both eras).
TCP = ["-m", PROTOCOL, "-p", PROTOCOL]
TO_LOCAL = ["-m", "addrtype", "--dst-type", "LOCAL"]
FROM_LOCAL = ["-m", "addrtype", "--src-type", "LOCAL"]
CT_NEW = ["-m", "conntrack", "--ctstate", "NEW"]


@dataclass(frozen=True)
class Endpoint:
    pod: str  # pod name (PodSpec.name)
    ip: IPv4Address
    port: int
    node: str  # node the pod runs on

    @property
    def address(self) -> str:
        """The "ip:port" string kube-proxy hashes into the KUBE-SEP name and DNATs to."""
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class NodeRules:
    node: str
    jumps: str  # restore text (--noflush) hooking KUBE-* chains from built-in chains; applied once, at setup
    chains: str  # restore text (--noflush) declaring and filling every KUBE-* chain; re-applied on changes

    def text(self) -> str:
        return self.jumps + self.chains


def endpoints_from_topology(topo: Topology, plan: NetworkPlan) -> dict[str, list[Endpoint]]:
    """Service name -> its ready endpoints (all pods of the topology), in pod order."""
    out: dict[str, list[Endpoint]] = {}
    for svc in topo.services:
        pods = topo.pods_of(svc.name)
        out[svc.name] = [Endpoint(pod=p.name, ip=plan.ip(p.name), port=svc.port, node=p.node) for p in pods]
    return out


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def chain_name(prefix: str, service_port_name: str, protocol: str = "tcp", endpoint: str = "") -> str:
    """kube-proxy's chain name: prefix + base32(sha256(service_port_name + protocol + endpoint))[:16].

    prefix is "KUBE-SVC-", "KUBE-SEP-", "KUBE-XLB-", "KUBE-EXT-" or "KUBE-SVL-"; service_port_name is
    "namespace/name:portname"; endpoint ("ip:port") only for KUBE-SEP- chains.
    """
    return prefix + _hash16(service_port_name + protocol + endpoint)


def service_port_name(svc: Service) -> str:
    return f"{svc.namespace}/{svc.name}:{PORT_NAME}"


def health_check_node_port(topo: Topology, service: str) -> int | None:
    """The healthCheckNodePort of a Local-policy service (None for Cluster policy).

    The API server allocates it at random from the NodePort range; the topology has no field for it, so the
    lab takes the highest free ports counting down from 32767, in service order (deterministic, never a
    NodePort).
    """
    taken = {s.node_port for s in topo.services}
    port = NODEPORT_RANGE[1]
    for svc in topo.services:
        if svc.external_traffic_policy != "Local":
            continue
        while port in taken:
            port -= 1
        taken.add(port)
        if svc.name == service:
            return port
    return None


def probability(era: str, n: int) -> str:
    """1/n as kube-proxy of the era prints it: 1.5 used "%0.5f", 1.8+ "%0.10f"."""
    return f"{1.0 / n:.5f}" if era == "legacy" else f"{1.0 / n:.10f}"


def _q(text: str) -> str:
    """Quote a comment the way kube-proxy does (only comments with spaces carry quotes)."""
    return f'"{text}"' if " " in text else text


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", _q(text)]


class _Table:
    """One table's part of a restore file: chain declarations first, then rules (kube-proxy's layout)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chains: list[str] = []
        self.rules: list[str] = []

    def declare(self, *chains: str) -> None:
        for chain in chains:
            if chain not in self.chains:
                self.chains.append(chain)

    def add(self, *parts: str | Iterable[str]) -> None:
        words: list[str] = []
        for part in parts:
            words.extend([part] if isinstance(part, str) else part)
        self.rules.append(" ".join(words))

    def text(self) -> str:
        if not self.chains and not self.rules:
            return ""
        lines = [f"*{self.name}"] + [f":{c} - [0:0]" for c in self.chains] + self.rules + ["COMMIT"]
        return "\n".join(lines) + "\n"


@dataclass
class _Svc:
    """What kube-proxy derives from a Service and its endpoints for one node."""

    svc: Service
    name: str  # "namespace/name:thrift"
    cluster_ip: IPv4Address
    endpoints: list[Endpoint]  # sorted, deduplicated
    local: list[Endpoint] = field(default_factory=list)
    hc_port: int | None = None

    @property
    def policy_local(self) -> bool:
        return self.svc.external_traffic_policy == "Local"

    def chain(self, prefix: str) -> str:
        return chain_name(prefix, self.name, PROTOCOL)

    def sep(self, ep: Endpoint) -> str:
        return chain_name("KUBE-SEP-", self.name, PROTOCOL, ep.address)


def _sorted_endpoints(era: str, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """Order endpoints as the era's kube-proxy sees them, dropping duplicate ip:port (kube-proxy keys by it).

    1.5: the endpoints controller sorts addresses by IP string (then pod UID; the pod name stands in).
    1.28: kube-proxy's EndpointSlice cache sorts by the "ip:port" string.
    """
    unique: dict[str, Endpoint] = {}
    for ep in endpoints:
        unique.setdefault(ep.address, ep)
    if era == "legacy":
        return sorted(unique.values(), key=lambda e: (str(e.ip), e.pod))
    return sorted(unique.values(), key=lambda e: e.address)


def render_node(
    topo: Topology, plan: NetworkPlan, node: str, endpoints: dict[str, list[Endpoint]] | None = None
) -> NodeRules:
    """The rules kube-proxy (and, for the legacy era, the kubelet) would install on `node`.

    `endpoints` maps service name -> ready endpoints (default: every pod of the topology); a service missing
    from it has no endpoints. Entries may name pods that no longer exist (stale endpoints render as given).
    """
    if node not in {n.name for n in topo.k8s_nodes}:
        raise ValueError(f"unknown node '{node}' (nodes: {', '.join(n.name for n in topo.k8s_nodes)})")
    if endpoints is None:
        endpoints = endpoints_from_topology(topo, plan)
    era = topo.kube_proxy.flavour
    services = []
    for svc in topo.services:
        eps = _sorted_endpoints(era, endpoints.get(svc.name, []))
        services.append(
            _Svc(
                svc=svc,
                name=service_port_name(svc),
                cluster_ip=plan.cluster_ips[svc.name],
                endpoints=eps,
                local=[e for e in eps if e.node == node],
                hc_port=health_check_node_port(topo, svc.name),
            )
        )
    cluster_cidr = str(topo.cluster.pod_cidr)  # kube-proxy's --cluster-cidr (kops/kubenet: the pod CIDR)
    random_fully = topo.kube_proxy.random_fully
    if era == "legacy":
        jumps, chains = _legacy(services, cluster_cidr, random_fully)
    else:
        liberal = topo.kube_proxy.conntrack.tcp_be_liberal
        jumps, chains = _modern(services, cluster_cidr, random_fully, liberal)
    head = f"# kube-proxy {'1.5 (legacy)' if era == 'legacy' else '1.28 (modern)'} rules for {node}"
    return NodeRules(
        node=node,
        jumps=f"{head}: jumps from the built-in chains (once, at setup)\n" + jumps,
        chains=f"{head}: KUBE-* chains (flushed and refilled on every sync)\n" + chains,
    )


SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SEP-", "KUBE-XLB-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")


def stale_chains(saved: str, rules: NodeRules) -> str:
    """Restore text deleting per-service chains that `saved` (iptables-save output) has and `rules` no longer.

    Re-applying `chains` flushes only the chains it declares, so a removed endpoint's KUBE-SEP chain stays
    behind (unreferenced, harmless). kube-proxy deletes such chains the same way: flush by declaring them,
    then `-X`. Returns "" when there is nothing to delete.
    """
    wanted = set(re.findall(r"^:(KUBE-\S+)", rules.chains, flags=re.M))
    table, stale = "", []
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif table == "nat" and line.startswith(":KUBE-"):
            name = line[1:].split()[0]
            if name.startswith(SERVICE_CHAIN_PREFIXES) and name not in wanted:
                stale.append(name)
    if not stale:
        return ""
    lines = ["*nat"] + [f":{c} - [0:0]" for c in stale] + [f"-X {c}" for c in stale] + ["COMMIT"]
    return "\n".join(lines) + "\n"


# --- legacy: kube-proxy 1.5 + kubelet 1.5 ------------------------------------------------------------------


def _random(era: str, left: int) -> list[str]:
    """The statistic match of a balancing rule with `left` endpoints to go; the last one matches always."""
    if left <= 1:
        return []
    return ["-m", "statistic", "--mode", "random", "--probability", probability(era, left)]


def _legacy(services: list[_Svc], cluster_cidr: str, random_fully: bool) -> tuple[str, str]:
    masq = f"{MASQ_MARK}/{MASQ_MARK}"
    drop = f"{DROP_MARK}/{DROP_MARK}"
    portals = _comment("kubernetes service portals")

    # Jumps, in the order they are made, each prepended (-I): the kubelet starts first, then kube-proxy.
    jf, jn = _Table("filter"), _Table("nat")
    jf.declare("KUBE-FIREWALL", "KUBE-SERVICES")
    jf.add("-I", "OUTPUT", "-j", "KUBE-FIREWALL")
    jf.add("-I", "INPUT", "-j", "KUBE-FIREWALL")
    jf.add("-I", "OUTPUT", portals, "-j", "KUBE-SERVICES")
    jn.declare("KUBE-SERVICES", "KUBE-POSTROUTING")
    jn.add("-I", "OUTPUT", portals, "-j", "KUBE-SERVICES")
    jn.add("-I", "PREROUTING", portals, "-j", "KUBE-SERVICES")
    jn.add("-I", "POSTROUTING", _comment("kubernetes postrouting rules"), "-j", "KUBE-POSTROUTING")

    f, n = _Table("filter"), _Table("nat")
    f.declare("KUBE-SERVICES")
    n.declare("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
    snat = ["-j", "MASQUERADE"] + (["--random-fully"] if random_fully else [])
    n.add("-A", "KUBE-POSTROUTING", _comment("kubernetes service traffic requiring SNAT"), "-m", "mark",
          "--mark", masq, snat)  # fmt: skip
    n.add("-A", "KUBE-MARK-MASQ", "-j", "MARK", "--set-xmark", masq)

    for s in services:
        svc_chain, xlb_chain = s.chain("KUBE-SVC-"), s.chain("KUBE-XLB-")
        n.declare(svc_chain)
        if s.policy_local:
            n.declare(xlb_chain)
        cluster_ip = [*TCP, "-d", f"{s.cluster_ip}/32", "--dport", str(s.svc.service_port)]
        cip = _comment(f"{s.name} cluster IP")
        n.add("-A", "KUBE-SERVICES", cip, cluster_ip, "! -s", cluster_cidr, "-j", "KUBE-MARK-MASQ")
        n.add("-A", "KUBE-SERVICES", cip, cluster_ip, "-j", svc_chain)

        nodeport = ["-A", "KUBE-NODEPORTS", *_comment(s.name), *TCP, "--dport", str(s.svc.node_port)]
        if s.policy_local:
            n.add(nodeport, "-j", xlb_chain)  # no masquerade: Local keeps the client's source IP
        else:
            n.add(nodeport, "-j", "KUBE-MARK-MASQ")
            n.add(nodeport, "-j", svc_chain)

        if not s.endpoints:
            # 1.5 rejects only ClusterIP traffic; the NodePort rules above jump to an empty chain.
            f.add("-A", "KUBE-SERVICES", _comment(f"{s.name} has no endpoints"), cluster_ip, "-j", "REJECT")
            continue

        for ep in s.endpoints:
            n.declare(s.sep(ep))
        for i, ep in enumerate(s.endpoints):
            left = len(s.endpoints) - i
            n.add("-A", svc_chain, _comment(s.name), _random("legacy", left), "-j", s.sep(ep))
            sep = ["-A", s.sep(ep), *_comment(s.name)]
            n.add(sep, "-s", f"{ep.ip}/32", "-j", "KUBE-MARK-MASQ")  # hairpin: a pod reaching itself
            n.add(sep, TCP, "-j", "DNAT", "--to-destination", ep.address)

        if not s.policy_local:
            continue
        redirect = "Redirect pods trying to reach external loadbalancer VIP to clusterIP"
        n.add("-A", xlb_chain, _comment(redirect), "-s", cluster_cidr, "-j", svc_chain)
        if not s.local:
            n.add("-A", xlb_chain, _comment(f"{s.name} has no local endpoints"), "-j", "KUBE-MARK-DROP")
        for i, ep in enumerate(s.local):
            left = len(s.local) - i
            rule = _comment(f"Balancing rule {i} for {s.name}")
            n.add("-A", xlb_chain, rule, _random("legacy", left), "-j", s.sep(ep))

    n.add("-A", "KUBE-SERVICES", _comment(NODEPORTS_LAST_COMMENT), TO_LOCAL, "-j", "KUBE-NODEPORTS")

    # The kubelet's chains: KUBE-MARK-DROP marks, KUBE-FIREWALL (hooked from INPUT and OUTPUT) drops.
    n.declare("KUBE-MARK-DROP")
    n.add("-A", "KUBE-MARK-DROP", "-j", "MARK", "--set-xmark", drop)
    f.declare("KUBE-FIREWALL")
    firewall = _comment("kubernetes firewall for dropping marked packets")
    f.add("-A", "KUBE-FIREWALL", firewall, "-m", "mark", "--mark", drop, "-j", "DROP")

    return jf.text() + jn.text(), f.text() + n.text()


# --- modern: kube-proxy 1.28 --------------------------------------------------------------------------------

# (table, chain hooked, built-in chain, comment, extra matches), in kube-proxy's order; each is prepended.
_EXTERNAL = "kubernetes externally-visible service portals"
_LB_FIREWALL = "kubernetes load balancer firewall"
_MODERN_JUMPS: list[tuple[str, str, str, str, list[str]]] = [
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", _EXTERNAL, CT_NEW),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", _EXTERNAL, CT_NEW),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", []),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", CT_NEW),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", CT_NEW),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", []),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", _LB_FIREWALL, CT_NEW),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", _LB_FIREWALL, CT_NEW),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", _LB_FIREWALL, CT_NEW),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", []),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", []),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", []),
]


def _modern_jumps() -> str:
    tables = {"filter": _Table("filter"), "nat": _Table("nat"), "mangle": _Table("mangle")}
    # The kubelet (started first) hooks KUBE-FIREWALL; kube-proxy's identical jump then already exists.
    tables["filter"].declare("KUBE-FIREWALL")
    tables["filter"].add("-I", "INPUT", "-j", "KUBE-FIREWALL")
    tables["filter"].add("-I", "OUTPUT", "-j", "KUBE-FIREWALL")
    for table, chain, builtin, comment, extra in _MODERN_JUMPS:
        tables[table].declare(chain)
        tables[table].add("-I", builtin, extra, _comment(comment), "-j", chain)
    for table in tables.values():  # kube-proxy's canary: empty; if it vanishes, kube-proxy resyncs everything
        table.declare("KUBE-PROXY-CANARY")
    return tables["filter"].text() + tables["nat"].text() + tables["mangle"].text()


def _modern(services: list[_Svc], cluster_cidr: str, random_fully: bool, liberal: bool) -> tuple[str, str]:
    masq = f"{MASQ_MARK}/{MASQ_MARK}"
    f, n = _Table("filter"), _Table("nat")
    f.declare("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS")
    f.declare("KUBE-PROXY-FIREWALL")
    n.declare("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
    n.add("-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", masq, "-j", "RETURN")
    n.add("-A", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", MASQ_MARK)  # clear it: no second masquerade
    snat = ["-j", "MASQUERADE"] + (["--random-fully"] if random_fully else [])
    n.add("-A", "KUBE-POSTROUTING", _comment("kubernetes service traffic requiring SNAT"), snat)
    n.add("-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", MASQ_MARK)
    # localhostNodePorts (default on) sets route_localnet; this rule closes the hole it opens.
    f.declare("KUBE-FIREWALL")
    f.add("-A", "KUBE-FIREWALL", _comment("block incoming localnet connections"), "-d", "127.0.0.0/8",
          "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
          "-j", "DROP")  # fmt: skip

    for s in services:
        svc_chain, svl_chain, ext_chain = s.chain("KUBE-SVC-"), s.chain("KUBE-SVL-"), s.chain("KUBE-EXT-")
        has_endpoints = bool(s.endpoints)
        has_external = has_endpoints and (not s.policy_local or bool(s.local))
        cluster_ip = [*TCP, "-d", str(s.cluster_ip), "--dport", str(s.svc.service_port)]
        nodeport = [*TCP, "--dport", str(s.svc.node_port)]
        if has_endpoints:
            target, why = "DROP", _comment(f"{s.name} has no local endpoints")
        else:
            target, why = "REJECT", _comment(f"{s.name} has no endpoints")

        if has_endpoints:
            n.add("-A", "KUBE-SERVICES", _comment(f"{s.name} cluster IP"), cluster_ip, "-j", svc_chain)
            n.add("-A", "KUBE-NODEPORTS", _comment(s.name), nodeport, "-j", ext_chain)
        else:
            f.add("-A", "KUBE-SERVICES", why, cluster_ip, "-j", target)
        if not has_external:
            f.add("-A", "KUBE-EXTERNAL-SERVICES", why, TO_LOCAL, nodeport, "-j", target)
        if s.hc_port is not None:
            hc = [*_comment(f"{s.name} health check node port"), "-m", "tcp", "-p", "tcp"]
            f.add("-A", "KUBE-NODEPORTS", hc, "--dport", str(s.hc_port), "-j", "ACCEPT")
        if not has_endpoints:
            continue  # no nat chains at all for a service without endpoints

        # Off-cluster sources reaching the ClusterIP get masqueraded (they may bounce to another node).
        cip = _comment(f"{s.name} cluster IP")
        n.add("-A", svc_chain, cip, cluster_ip, "!", "-s", cluster_cidr, "-j", "KUBE-MARK-MASQ")

        n.declare(ext_chain)
        ext = f"for {s.name} external destinations"
        if not s.policy_local:
            n.add("-A", ext_chain, _comment(f"masquerade traffic {ext}"), "-j", "KUBE-MARK-MASQ")
        else:
            n.add("-A", ext_chain, _comment(f"pod traffic {ext}"), "-s", cluster_cidr, "-j", svc_chain)
            masq_local = _comment(f"masquerade LOCAL traffic {ext}")
            n.add("-A", ext_chain, masq_local, FROM_LOCAL, "-j", "KUBE-MARK-MASQ")
            n.add("-A", ext_chain, _comment(f"route LOCAL traffic {ext}"), FROM_LOCAL, "-j", svc_chain)
        if has_external:
            n.add("-A", ext_chain, "-j", svl_chain if s.policy_local else svc_chain)

        n.declare(svc_chain)
        _modern_balance(n, s, svc_chain, s.endpoints)
        if s.policy_local and s.local:
            n.declare(svl_chain)
            _modern_balance(n, s, svl_chain, s.local)
        for ep in s.endpoints:  # every endpoint is reachable through KUBE-SVC-x (internal policy Cluster)
            n.declare(s.sep(ep))
            sep = ["-A", s.sep(ep), *_comment(s.name)]
            n.add(sep, "-s", str(ep.ip), "-j", "KUBE-MARK-MASQ")  # hairpin: a pod reaching itself
            n.add(sep, TCP, "-j", "DNAT", "--to-destination", ep.address)

    n.add("-A", "KUBE-SERVICES", _comment(NODEPORTS_LAST_COMMENT), TO_LOCAL, "-j", "KUBE-NODEPORTS")

    # PR #74840 added the INVALID drop; kube-proxy skips it when nf_conntrack_tcp_be_liberal=1 (PR #120412).
    if not liberal:
        f.add("-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
    f.add("-A", "KUBE-FORWARD", _comment("kubernetes forwarding rules"), "-m", "mark", "--mark", masq,
          "-j", "ACCEPT")  # fmt: skip
    f.add("-A", "KUBE-FORWARD", _comment("kubernetes forwarding conntrack rule"), "-m", "conntrack",
          "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")  # fmt: skip
    return _modern_jumps(), f.text() + n.text()


def _modern_balance(n: _Table, s: _Svc, chain: str, endpoints: list[Endpoint]) -> None:
    for i, ep in enumerate(endpoints):
        left = len(endpoints) - i
        pick = _comment(f"{s.name} -> {ep.address}")
        n.add("-A", chain, pick, _random("modern", left), "-j", s.sep(ep))


# --- explain ------------------------------------------------------------------------------------------------


def describe_rule(rule_line: str) -> str:
    """A plain-English explanation of one line of the rendered (or iptables-save) text."""
    line = rule_line.strip()
    if not line or line.startswith("#"):
        return "comment line (ignored by iptables-restore)"
    if line.startswith("*"):
        return f"starts the {line[1:]} table"
    if line == "COMMIT":
        return "applies the table's changes atomically"
    if line.startswith(":"):
        name = line[1:].split()[0]
        return f"declares chain {name} (and empties it if it exists)"
    if line.startswith("-X "):
        return f"deletes chain {line.split()[1]}"
    try:
        words = shlex.split(line)
    except ValueError:
        return "unparsable rule"
    if len(words) < 2 or words[0] not in ("-A", "-I"):
        return "not a rule line"

    chain, opts = words[1], _options(words[2:])
    target = opts.get("-j", "")
    cond = _conditions(opts)
    proto = f"{opts['-p'].upper()} " if "-p" in opts else ""
    pkts = f"{proto}packets {' '.join(cond)}".strip() if cond or proto else "all packets"

    if target.startswith("KUBE-SEP-") and chain.startswith(("KUBE-SVC-", "KUBE-SVL-", "KUBE-XLB-")):
        if "--probability" in opts:
            p = float(opts["--probability"])
            return f"picks endpoint {target} with probability {p:.2f} (random)"
        return f"picks endpoint {target} (every connection that reaches this rule)"
    if target == "DNAT":
        return f"DNATs {pkts} to pod {opts.get('--to-destination', '?')} (rewrites the destination)"
    if target == "MASQUERADE":
        how = ", --random-fully: random source ports" if "--random-fully" in opts else ""
        return f"rewrites the source of {pkts} to this node's address (MASQUERADE{how})"
    if target == "MARK":
        for flag, verb in (("--set-xmark", "sets"), ("--or-mark", "sets"), ("--xor-mark", "clears")):
            if flag in opts:
                bits = opts[flag].split("/")[0]
                known = {int(MASQ_MARK, 16): " (masquerade mark)", int(DROP_MARK, 16): " (drop mark)"}
                return f"{verb} mark {bits}{known.get(int(bits, 16), '')} on {pkts}"
        return f"changes the mark of {pkts}"
    if target == "KUBE-MARK-MASQ":
        return f"marks {pkts} for masquerade (SNAT on the way out)"
    if target == "KUBE-MARK-DROP":
        return f"marks {pkts} to be dropped (KUBE-FIREWALL drops them)"
    if target in ("DROP", "REJECT", "ACCEPT", "RETURN"):
        return {
            "DROP": f"drops {pkts} (silently)",
            "REJECT": f"rejects {pkts} (ICMP port unreachable)",
            "ACCEPT": f"accepts {pkts}",
            "RETURN": f"returns {pkts} to the calling chain",
        }[target]
    if target and words[0] == "-I":
        return f"hooks {target} into {chain} for {pkts}"
    if target:
        return f"jumps to {target} for {pkts}"
    return f"counts {pkts} (no target)"


def _options(words: list[str]) -> dict[str, str]:
    """Flag -> value (or "" for bare flags); a preceding "!" is kept as a "!" prefix on the value."""
    opts: dict[str, str] = {}
    negate = False
    i = 0
    while i < len(words):
        w = words[i]
        if w == "!":
            negate = True
        elif w.startswith("-"):
            value = ""
            if i + 1 < len(words) and not words[i + 1].startswith("-") and words[i + 1] != "!":
                value = words[i + 1]
                i += 1
            if w == "-m":  # keep every module name, not only the last
                opts.setdefault("-m", "")
                opts["-m"] = (opts["-m"] + " " + value).strip()
            else:
                opts[w] = ("!" if negate else "") + value
            negate = False
        i += 1
    return opts


def _conditions(opts: dict[str, str]) -> list[str]:
    """Phrases that finish "packets ...", in a fixed order."""
    out = []
    if "-s" in opts:
        src = opts["-s"]
        out.append(f"from outside {src[1:]}" if src.startswith("!") else f"from {src}")
    if "-d" in opts:
        dst = opts["-d"]
        where = f"not to {dst[1:]}" if dst.startswith("!") else f"to {dst}"
        out.append(where + (f":{opts['--dport']}" if "--dport" in opts else ""))
    elif "--dport" in opts:
        out.append(f"to port {opts['--dport']}")
    if "--src-type" in opts:
        out.append("sent from this node itself")
    if "--dst-type" in opts:
        out.append("sent to a local address of this node")
    if "--ctstate" in opts:
        state = opts["--ctstate"]
        out.append(f"{'not ' if state.startswith('!') else ''}in conntrack state {state.lstrip('!')}")
    if "--mark" in opts:
        mark = opts["--mark"]
        out.append(f"not marked {mark[1:]}" if mark.startswith("!") else f"marked {mark}")
    return out
