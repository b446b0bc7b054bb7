"""The fault kinds: each one's parameters, its target, and the reversible steps it is made of.

A kind's `plan` only reads the lab's topology and address plan (plus one kernel probe for netem) and returns
Steps; lab.faults.ops makes and undoes them. Delay is a round-trip figure: `delay=50ms` adds 50 ms to every
round trip over the faulted path (25 ms each way), `jitter` likewise (+-jitter/2 each way), so a TCP connect
over that path takes `delay` longer; with Cluster policy a second cross-AZ hop adds it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from lab.errors import EnvironmentProblem, InputError
from lab.faults import reaper
from lab.faults.model import Flag, Fraction, FractionIn, Names, Params, RateIn, Step
from lab.faults.ops import netem_available
from lab.models.common import DurationIn, Int, Text
from lab.render.kubeproxy import MASQ_MARK
from lab.render.plan import CLUSTER_ROUTER

if TYPE_CHECKING:
    from lab.lab import Lab

DelayEngine = Literal["auto", "netem", "nfqueue"]
MAX_DELAY = 10.0
CONNTRACK_LIMIT = 1 << 24  # as the topology's kube_proxy.conntrack.max
HEALTHZ_PORT = 10256  # kube-proxy's healthz port: answers on every node whatever the services do


def chain(fid: int) -> str:
    return f"LAB-FAULT-{fid}"


def queue(fid: int) -> int:
    return fid % 65536


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class Delay(Params):
    """Shared by link and cross-az."""

    delay: DurationIn(0, MAX_DELAY) = Field(
        0.0, description="added to each round trip over the path (half each way), e.g. 50ms"
    )
    jitter: DurationIn(0, MAX_DELAY) = Field(0.0, description="+- on each round trip (uniform), at most the delay")
    loss: Fraction = Field(0.0, description="packets dropped in each direction, e.g. 1%")
    reorder: Flag = Field(False, description="let jitter reorder packets (off: they keep their order)")
    engine: DelayEngine = Field("auto", description="delay mechanism: netem when the kernel has it, else nfqueue")

    @model_validator(mode="after")
    def _ranges(self) -> Delay:
        if self.jitter > self.delay:
            raise ValueError("jitter must not exceed the delay")
        return self


class LinkParams(Delay):
    bandwidth: RateIn(8_000, 100_000_000_000) | None = Field(
        None, description="egress rate on both ends, e.g. 10mbit (tbf)"
    )
    partition: Flag = Field(False, description="drop everything in both directions")

    @model_validator(mode="after")
    def _something(self) -> LinkParams:
        if not (self.delay or self.loss or self.bandwidth or self.partition):
            raise ValueError("give at least one of delay, loss, bandwidth, partition")
        if self.partition and (self.delay or self.loss or self.bandwidth):
            raise ValueError("partition drops everything: give it alone")
        return self


class CrossAzParams(Delay):
    peering: Flag = Field(False, description="also the VPC peering link (client VPC <-> cluster VPC)")

    @model_validator(mode="after")
    def _something(self) -> CrossAzParams:
        if not (self.delay or self.loss):
            raise ValueError("give delay and/or loss")
        return self


class ExhaustionParams(Params):
    mode: Literal["fill", "ceiling"] = Field("fill", description="fill: leave `free` slots; ceiling: a smaller max")
    free: Int(0, CONNTRACK_LIMIT, text=True) = Field(0, description="fill: slots left in the node's table")
    max: Int(1, CONNTRACK_LIMIT, text=True) | None = Field(
        None, description="ceiling: the emulated nf_conntrack_max (default: what kube-proxy set for the node)"
    )

    @model_validator(mode="after")
    def _mode(self) -> ExhaustionParams:
        if self.mode == "fill" and self.max is not None:
            raise ValueError("max=N is for mode=ceiling; mode=fill takes free=N")
        return self


class MisrouteParams(Params):
    variant: Literal["first-listener", "local-no-endpoints", "wrong-port"] = Field(
        "first-listener", description="how the check misses the broken path (docs/faults.md, variant by variant)"
    )
    service: Text(40) | None = Field(None, description="the service whose path breaks (default depends on variant)")
    port: Int(1, 65535, text=True) = Field(HEALTHZ_PORT, description="wrong-port: where the health check goes")
    effect: Literal["reset", "drop"] = Field(
        "reset", description="how the broken path fails: a TCP reset, or a silent drop (timeouts)"
    )


class StaleParams(Params):
    mode: Literal["refused", "blackhole"] = Field(
        "refused", description="refused: the pod's server is gone; blackhole: the pod answers nothing"
    )
    fresh: Names = Field(default_factory=list, description="nodes whose kube-proxy noticed (re-synced without it)")


class BacklogParams(Params):
    backlog: Int(1, 4096, text=True) = Field(1, description="the pod's listen backlog")
    accept_delay: DurationIn(0, 10) = Field(0.2, description="how long the server waits after each accept (a busy pod)")


class IdleParams(Params):
    # Shorter than the topology's idle timeout may be (AWS: 1 s at least): a quick run scales it down.
    timeout: DurationIn(0.1, 3600) = Field(5.0, description="the ELB idle timeout (both sides), e.g. 5s")


class SnatRangeParams(Params):
    # Two: fewer than the connections a node has alive at once at the lab's rates (docs/faults.md).
    ports: Int(1, 64512, text=True) = Field(2, description="how many source ports the node's masquerade may use")
    first: Int(1024, 65535, text=True) = Field(40000, description="the first of them")

    @model_validator(mode="after")
    def _fits(self) -> SnatRangeParams:
        if self.first + self.ports - 1 > 65535:
            raise ValueError(f"first + ports - 1 must be at most 65535 (got {self.first + self.ports - 1})")
        return self


class InvalidParams(Params):
    rate: FractionIn(0.0001, 0.5) = Field(0.01, description="fraction of the pod's data segments sent out of window")


@dataclass
class Plan:
    steps: list[Step]
    engine: str | None = None
    notes: list[str] | None = None


@dataclass(frozen=True)
class FaultKind:
    name: str
    summary: str
    params: type[Params]
    target: str  # what --target names
    resolve: Callable[[Lab, str | None, Any], str]
    plan: Callable[[Lab, int, str, Any], Plan]
    example: str


# --- targets ---------------------------------------------------------------------------------------------------


def _one_of(what: str, name: str | None, choices: list[str], default: str | None = None) -> str:
    if name is None:
        if default is None:
            raise InputError(f"--target is required: a {what} ({', '.join(choices)})")
        return default
    if name not in choices:
        raise InputError(f"unknown target '{name}': not a {what} of this lab; choose one of: {', '.join(choices)}")
    return name


def _nodes(lab: Lab) -> list[str]:
    return [n.name for n in lab.topology.k8s_nodes]


def _pods_or_service(lab: Lab, name: str | None, _p: Any) -> str:
    choices = [p.name for p in lab.topology.pods] + [s.name for s in lab.topology.services]
    return _one_of("pod or service", name, choices)


def _pods_of(lab: Lab, target: str) -> list[str]:
    if target in {s.name for s in lab.topology.services}:
        return [p.name for p in lab.topology.pods_of(target)]
    return [target]


# --- link / cross-az -----------------------------------------------------------------------------------------


def _engine(lab: Lab, host: str, p: Delay) -> str:
    if not p.delay:
        return "iptables"
    if p.engine == "nfqueue":
        return "nfqueue"
    has = netem_available(lab.host(host))
    if p.engine == "netem" and not has:
        raise EnvironmentProblem("this kernel has no sch_netem; use engine=nfqueue (or engine=auto)")
    return "netem" if has else "nfqueue"


def _nfq_helper(fid: int, host: str, p: Delay) -> Step:
    argv = ["@nfqdelay", "--queue", str(queue(fid)), "--delay-us", str(_us(p.delay / 2))]
    argv += ["--jitter-us", str(_us(p.jitter / 2))]
    if p.reorder:
        argv.append("--reorder")
    return Step(
        "helper",
        host,
        {"argv": argv + ["--seed", str(fid)], "marker": ["--queue", str(queue(fid)), "--seed", str(fid)],
         "log": f"fault-{fid}-{host}.log"},
    )  # fmt: skip


def _netem(p: Delay, bandwidth: int | None) -> list[dict[str, Any]]:
    # netem itself reorders packets when jitter exceeds their spacing: reorder=off is a promise of nfqueue only.
    netem = {"delay": _us(p.delay / 2), "jitter": _us(p.jitter / 2)}
    if bandwidth is None:
        return [{"kind": "netem", "parent": "root", "handle": "1ab:", "params": netem}]
    return [_tbf(bandwidth), {"kind": "netem", "parent": "1ab:1", "handle": "1ac:", "params": netem}]


def _tbf(bits: int) -> dict[str, Any]:
    burst = max(3200, bits // 8 // 250)  # 4 ms worth of bytes, at least two full frames
    return {"kind": "tbf", "parent": "root", "handle": "1ab:", "params": {"rate": f"{bits}bit", "burst": burst,
            "latency": "100ms"}}  # fmt: skip


def _drop_and_queue(fid: int, p: Delay, engine: str) -> list[str]:
    rules = []
    if p.loss:
        rules.append(f"-m statistic --mode random --probability {p.loss:.6f} -j DROP")
    if engine == "nfqueue":
        rules.append(f"-j NFQUEUE --queue-num {queue(fid)} --queue-bypass")
    return rules


def plan_link(lab: Lab, fid: int, target: str, p: LinkParams) -> Plan:
    link = lab.plan.link(target)
    end_a, end_b = link.a, link.b
    engine = _engine(lab, end_b.host, p)
    steps: list[Step] = []
    if engine == "nfqueue":
        steps.append(_nfq_helper(fid, end_b.host, p))
    rules = ["-j DROP"] if p.partition else _drop_and_queue(fid, p, engine)
    if rules:
        # At the link's far end (the host itself): arriving before conntrack (raw), leaving last (mangle).
        steps.append(
            Step(
                "iptables",
                end_b.host,
                {
                    "chain": chain(fid),
                    "tables": {
                        "raw": {"hooks": [["PREROUTING", f"-i {end_b.ifname}"]], "rules": rules},
                        "mangle": {"hooks": [["POSTROUTING", f"-o {end_b.ifname}"]], "rules": rules},
                    },
                },
            )  # fmt: skip
        )
    qdiscs = None
    if engine == "netem":
        qdiscs = _netem(p, p.bandwidth)
    elif p.bandwidth is not None:
        qdiscs = [_tbf(p.bandwidth)]
    if qdiscs:
        for end in (end_a, end_b):
            steps.append(Step("tc", end.host, {"ifname": end.ifname, "chain": qdiscs}))
    return Plan(steps, engine=engine if p.delay else None)


def _link_target(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("link", name, [link.name for link in lab.plan.links])


def _az_bridges(lab: Lab) -> dict[str, str]:
    """AZ -> its bridge in the cluster VPC router (the AZ's subnet)."""
    out = {}
    for az, net in lab.plan.subnets.items():
        if az == "client":
            continue
        bridge = next(
            b for b in lab.plan.bridges if b.host == CLUSTER_ROUTER and b.address and b.address.network == net
        )
        out[az] = bridge.name
    return out


def plan_cross_az(lab: Lab, fid: int, target: str, p: CrossAzParams) -> Plan:
    bridges = _az_bridges(lab)
    engine = _engine(lab, CLUSTER_ROUTER, p)
    ends = dict(bridges)
    if p.peering:
        ends["peering"] = "peering"
    pairs = [
        (a, b)
        for a in ends
        for b in ends
        if a != b and (target == "all" or target in (a, b)) and not (a == "peering" and b == "peering")
    ]
    if not pairs:
        raise InputError("cross-az needs two AZs (or peering=on): this topology has one; use the link kind")
    steps: list[Step] = []
    if engine == "nfqueue":
        steps.append(_nfq_helper(fid, CLUSTER_ROUTER, p))
    rules = []
    for a, b in pairs:
        rules += [f"-i {ends[a]} -o {ends[b]} {r}" for r in _drop_and_queue(fid, p, engine)]
    if engine == "netem":
        # Routed traffic leaving an AZ's bridge (or the peering link) towards it is what crossed into it.
        for az in {b for _a, b in pairs}:
            ifname = ends[az]
            sources = [lab.plan.subnets[a] for a, b in pairs if b == az and a != "peering"]
            sources += [cidr for node, cidr in lab.plan.pod_cidrs.items() if lab.topology.node(node).az in
                        {a for a, b in pairs if b == az}]  # fmt: skip
            if any(a == "peering" for a, b in pairs if b == az):
                sources.append(lab.topology.vpcs.client.cidr)
            if az == "peering":
                sources = [net for a, net in lab.plan.subnets.items() if a != "client"] + list(
                    lab.plan.pod_cidrs.values()
                )
            steps.append(Step("tc", CLUSTER_ROUTER, {"ifname": ifname, "chain": _classified_netem(p),
                              "filters": [str(s) for s in sources]}))  # fmt: skip
        rules = [r for r in rules if "NFQUEUE" not in r]
    if rules:
        steps.append(
            Step(
                "iptables",
                CLUSTER_ROUTER,
                {"chain": chain(fid), "tables": {"mangle": {"hooks": [["FORWARD", ""]], "rules": rules}}},
            )  # fmt: skip
        )
    return Plan(steps, engine=engine if p.delay else None)


def _classified_netem(p: Delay) -> list[dict[str, Any]]:
    """htb with a pass-through class and a delayed class (netem inside); u32 filters pick the delayed traffic."""
    fast = {"rate": "100gbit", "ceil": "100gbit"}
    return [
        {"kind": "htb", "parent": "root", "handle": "1ab:", "params": {"default": 1}},
        {"kind": "htb", "parent": "1ab:", "handle": "1ab:1", "params": fast, "class": True},
        {"kind": "htb", "parent": "1ab:", "handle": "1ab:2", "params": fast, "class": True},
        {"kind": "netem", "parent": "1ab:2", "handle": "1ac:", "params": _netem(p, None)[0]["params"]},
    ]


def _az_target(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("AZ", name, [az.name for az in lab.topology.azs], default="all")


# --- conntrack ----------------------------------------------------------------------------------------------------


def plan_exhaustion(lab: Lab, fid: int, target: str, p: ExhaustionParams) -> Plan:
    args: dict[str, Any] = {"fault": fid}
    if p.mode == "ceiling":
        # A smaller table: real entries may use `ceiling` slots, coming and going as on a real node.
        args["ceiling"] = p.max or lab.topology.conntrack_max
        steps = [Step("conntrack-fill", target, args)]
        if lab.time_scale < 1:
            # The kernel frees expired entries on its own clock (<= 60 s), which a quick run cannot scale: a
            # reaper walks the table at the run's pace, so the table empties when its timers say it does.
            marker = ["lab.faults.reaper", "--fault", str(fid)]
            period = f"{reaper.KERNEL_GC_MAX_INTERVAL_S * lab.time_scale:g}"
            argv = ["@python", "-m", *marker, "--period", period]
            steps.append(
                Step("helper", target, {"argv": argv, "marker": marker, "log": f"fault-{fid}-{target}.reaper.log"})
            )
        return Plan(steps)
    args["free"] = p.free
    # A full table stays full: a keeper tops the fillers up whenever one of the node's own entries expires.
    marker = ["lab.faults.keeper", "--fault", str(fid)]
    keeper = Step("helper", target, {"argv": ["@python", "-m", *marker, "--free", str(p.free)], "marker": marker,
                                     "log": f"fault-{fid}-{target}.keeper.log"})  # fmt: skip
    return Plan([Step("conntrack-fill", target, args), keeper])


def _node_target(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("node", name, _nodes(lab))


def _node_or_all(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("node", name, _nodes(lab), default="all")


def _exhaustion_target(lab: Lab, name: str | None, p: ExhaustionParams) -> str:
    node = _node_target(lab, name, p)
    if p.mode == "ceiling":
        from lab.faults.ops import ct_count

        count, limit = ct_count(lab.host(node))
        ceiling = p.max or lab.topology.conntrack_max
        if ceiling >= limit:
            what = f"parameter max={p.max}" if p.max else f"the node's conntrack max ({ceiling}, from the topology)"
            raise InputError(
                f"fault conntrack-exhaustion: {what}: must be below this machine's nf_conntrack_max ({limit}) "
                "(see `lab fault list`)"
            )
    return node


def plan_invalid(lab: Lab, fid: int, target: str, p: InvalidParams) -> Plan:
    steps = []
    for pod in _pods_of(lab, target):
        port = lab.topology.service(lab.plan.host(pod).service).port
        argv = ["@nfqdelay", "--queue", str(queue(fid)), "--mangle-seq", f"{p.rate:.6f}", "--seed", str(fid)]
        steps.append(Step("helper", pod, {"argv": argv, "marker": ["--queue", str(queue(fid)), "--mangle-seq"],
                          "log": f"fault-{fid}-{pod}.log"}))  # fmt: skip
        rule = f"-p tcp --sport {port} -j NFQUEUE --queue-num {queue(fid)} --queue-bypass"
        steps.append(Step("iptables", pod, {"chain": chain(fid), "tables": {
            "mangle": {"hooks": [["POSTROUTING", "-o eth0"]], "rules": [rule]}}}))  # fmt: skip
    return Plan(steps, engine="nfqueue")


def plan_snat_range(lab: Lab, fid: int, target: str, p: SnatRangeParams) -> Plan:
    last = p.first + p.ports - 1
    # kube-proxy's own masquerade, with the flavour's --random-fully, restricted to a port range. It comes
    # first in nat POSTROUTING, so the same packets never reach KUBE-POSTROUTING's unrestricted rule.
    rule = f"-p tcp -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j MASQUERADE --to-ports {p.first}-{last}"
    if lab.topology.kube_proxy.random_fully:
        rule += " --random-fully"
    nodes = _nodes(lab) if target == "all" else [target]
    steps = [Step("iptables", node, {"chain": chain(fid), "tables": {
        "nat": {"hooks": [["POSTROUTING", ""]], "rules": [rule]}}}) for node in nodes]  # fmt: skip
    how = "random (--random-fully)" if lab.topology.kube_proxy.random_fully else "the kernel's own search"
    return Plan(steps, notes=[f"masquerade source ports {p.first}-{last} ({p.ports}), picked by {how}"])


# --- Kubernetes and ELB ------------------------------------------------------------------------------------------


def _listener_services(lab: Lab) -> list[str]:
    out: list[str] = []
    for listener in lab.topology.elb.listeners:
        if listener.service not in out:
            out.append(listener.service)
    return out


def _misroute_target(lab: Lab, name: str | None, p: MisrouteParams) -> str:
    listeners = _listener_services(lab)
    if p.service is not None and p.service not in listeners:
        raise InputError(
            f"fault healthcheck-misroute: parameter service={p.service}: not a service behind an ELB listener; "
            f"choose one of: {', '.join(listeners)}"
        )
    first = listeners[0]
    checked = lab.topology.elb.health_check.target == "TCP:first-listener"
    if p.variant in ("first-listener", "local-no-endpoints") and (p.service or "") == first and checked:
        raise InputError(
            f"fault healthcheck-misroute: parameter service={first}: the health check covers the first listener's "
            f"service; choose another ({', '.join(listeners[1:]) or 'the topology has only one listener'})"
        )
    if p.variant != "wrong-port" and len(listeners) < 2 and p.service is None:
        raise InputError(f"fault healthcheck-misroute variant={p.variant} needs a second ELB listener")
    if p.variant == "local-no-endpoints":
        if name is not None:
            raise InputError("healthcheck-misroute variant=local-no-endpoints takes no --target (nodes without pods)")
        return "all"
    return _one_of("node", name, _nodes(lab), default="all")


def _misroute_service(lab: Lab, p: MisrouteParams) -> str:
    if p.service:
        return p.service
    listeners = _listener_services(lab)
    return listeners[0] if p.variant == "wrong-port" else listeners[-1]


def _break_nodeport(fid: int, node: str, node_port: int, effect: str) -> Step:
    action = "-j REJECT --reject-with tcp-reset" if effect == "reset" else "-j DROP"
    rule = f"-p tcp -m conntrack --ctstate NEW --ctorigdstport {node_port} {action}"
    # filter INPUT/FORWARD see the connection after kube-proxy's DNAT; the original port still names it.
    return Step("iptables", node, {"chain": chain(fid), "tables": {
        "filter": {"hooks": [["INPUT", ""], ["FORWARD", ""]], "rules": [rule]}}})  # fmt: skip


def plan_misroute(lab: Lab, fid: int, target: str, p: MisrouteParams) -> Plan:
    topo = lab.topology
    service = _misroute_service(lab, p)
    node_port = topo.service(service).node_port
    nodes = _nodes(lab) if target == "all" else [target]
    steps: list[Step] = []
    notes = [f"broken: {service} (NodePort {node_port})"]
    if p.variant == "local-no-endpoints":
        with_pods = {pod.node for pod in topo.pods_of(service)}
        empty = [n for n in _nodes(lab) if n not in with_pods]
        if not empty:
            raise InputError(f"every node runs a pod of {service}: Local policy breaks nothing; choose another service")
        steps.append(Step("kube-proxy", "kube-proxy", {"nodes": _nodes(lab), "local": [service]}))
        notes.append(f"nodes without local endpoints: {', '.join(empty)}")
        return Plan(steps, notes=notes)
    if p.variant == "wrong-port":
        for node in _nodes(lab):  # every node answers on the check's port, broken or not
            argv = ["@python", "-S", "@responder", "--port", str(p.port), "--fault", str(fid)]
            steps.append(Step("helper", node, {"argv": argv, "marker": ["--port", str(p.port), "--fault", str(fid)],
                              "log": f"fault-{fid}-{node}.log"}))  # fmt: skip
        for elb in topo.elb_nodes:
            servers = [n.name for n in topo.elb_targets(elb)]
            steps.append(Step("elb-check-port", elb.name, {"elb": elb.name, "servers": servers, "port": p.port}))
        notes.append(f"health check moved to port {p.port}, answered by a responder on every node")
    for node in nodes:
        steps.append(_break_nodeport(fid, node, node_port, p.effect))
    return Plan(steps, notes=notes)


def plan_stale(lab: Lab, fid: int, target: str, p: StaleParams) -> Plan:
    unknown = [n for n in p.fresh if n not in _nodes(lab)]
    if unknown:
        raise InputError(
            f"fault stale-endpoints: parameter fresh={','.join(p.fresh)}: unknown node '{unknown[0]}'; "
            f"nodes: {', '.join(_nodes(lab))}"
        )
    steps = [Step("pod", target, {"pod": target, "action": "stop"})]
    if p.mode == "blackhole":
        steps.append(Step("iptables", target, {"chain": chain(fid), "tables": {
            "raw": {"hooks": [["PREROUTING", "-i eth0"]], "rules": ["-j DROP"]}}}))  # fmt: skip
    if p.fresh:
        steps.append(Step("kube-proxy", "kube-proxy", {"nodes": p.fresh, "without": [target]}))
    stale = [n for n in _nodes(lab) if n not in p.fresh]
    return Plan(steps, notes=[f"nodes still sending to {target}: {', '.join(stale) or 'none'}"])


def _pod_target(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("pod", name, [p.name for p in lab.topology.pods])


def plan_backlog(lab: Lab, fid: int, target: str, p: BacklogParams) -> Plan:
    over = {"backlog": p.backlog, "accept_delay": p.accept_delay}
    return Plan(
        [Step("pod", pod, {"pod": pod, "action": "restart", "overrides": over}) for pod in _pods_of(lab, target)]
    )


def plan_idle(lab: Lab, fid: int, target: str, p: IdleParams) -> Plan:
    elbs = [e.name for e in lab.topology.elb_nodes] if target == "all" else [target]
    return Plan([Step("elb-config", elb, {"elb": elb, "seconds": p.timeout}) for elb in elbs])


def _elb_target(lab: Lab, name: str | None, _p: Any) -> str:
    return _one_of("ELB node", name, [e.name for e in lab.topology.elb_nodes], default="all")


KINDS: dict[str, FaultKind] = {
    k.name: k
    for k in (
        FaultKind("conntrack-exhaustion", "fill a node's conntrack table (ASSURED entries) or emulate a smaller max",
             ExhaustionParams, "node", _exhaustion_target, plan_exhaustion,
             "lab fault apply conntrack-exhaustion --target node-a1 mode=fill free=0"),
        FaultKind("healthcheck-misroute", "the ELB health check stays green while a service's path fails",
             MisrouteParams, "node (default: all)", _misroute_target, plan_misroute,
             "lab fault apply healthcheck-misroute --target node-a1 variant=first-listener"),
        FaultKind("cross-az", "delay/jitter/loss between AZs (and on the VPC peering link)", CrossAzParams,
             "AZ (default: all)", _az_target, plan_cross_az, "lab fault apply cross-az delay=50ms jitter=5ms"),
        FaultKind("link", "delay, jitter, loss, bandwidth or partition on one link", LinkParams, "link",
             _link_target, plan_link, "lab fault apply link --target node-a1 loss=2% bandwidth=10mbit"),
        FaultKind("conntrack-invalid", "a pod's segments arrive out of window: INVALID in conntrack, not un-NATed, RST",
             InvalidParams, "pod or service", _pods_or_service, plan_invalid,
             "lab fault apply conntrack-invalid --target accounts rate=1%"),
        FaultKind("snat-port-range", "kube-proxy's masquerade narrowed to a few source ports: NAT clashes drop SYNs",
             SnatRangeParams, "node (default: all)", _node_or_all, plan_snat_range,
             "lab fault apply snat-port-range --target node-a1 ports=2"),
        FaultKind("stale-endpoints", "a pod dies; kube-proxy rules keep sending to it", StaleParams, "pod",
             _pod_target, plan_stale, "lab fault apply stale-endpoints --target accounts-0 fresh=node-b1"),
        FaultKind("syn-backlog", "a pod's listen backlog so small that SYNs overflow under bursts", BacklogParams,
             "pod or service", _pods_or_service, plan_backlog,
             "lab fault apply syn-backlog --target accounts-0 backlog=1 accept_delay=200ms"),
        FaultKind("elb-idle-timeout", "the ELB drops idle connections at its timeout", IdleParams,
             "ELB node (default: all)", _elb_target, plan_idle, "lab fault apply elb-idle-timeout timeout=5s"),
    )
}  # fmt: skip


def get_kind(name: str) -> FaultKind:
    try:
        return KINDS[name]
    except KeyError:
        raise InputError(f"unknown fault kind '{name}'; kinds: {', '.join(KINDS)}") from None
