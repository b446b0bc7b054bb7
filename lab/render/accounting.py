"""The ELB node's backend-connection accounting, as iptables-restore text: every connect attempt to an instance
and its first answer (lab.metrics.accounting reads the counters; why this is how BackendConnectionErrors is
counted is told there). Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

CHAIN_OUT = "LAB-ELB-ATTEMPTS"
CHAIN_IN = "LAB-ELB-ANSWERS"
CHAIN_NOTRACK = "LAB-ELB-NOTRACK"
COMMENT = "lab-elb"
# The instrument's own conntrack entries need not outlive their connections for long (not modelled state).
ELB_CONNTRACK_SYSCTLS = {
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "10",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "10",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": "10",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": "10",
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": "10",
}


@dataclass(frozen=True)
class Instance:
    name: str
    ip: str


def instances_of(topology, plan, elb: str) -> list[Instance]:
    """The instances an ELB node sends to (and checks), with their addresses."""
    spec = next(e for e in topology.elb_nodes if e.name == elb)
    return [Instance(n.name, str(plan.ip(n.name))) for n in topology.elb_targets(spec)]


def render_rules(instances: Iterable[Instance]) -> str:
    """iptables-restore --noflush input creating the accounting chains (counters start at zero)."""
    insts = list(instances)
    out = ["*raw", f":{CHAIN_NOTRACK} - [0:0]"]
    out.append(f"-A PREROUTING -j {CHAIN_NOTRACK}")
    out.append(f"-A OUTPUT -j {CHAIN_NOTRACK}")
    for i in insts:
        out.append(f"-A {CHAIN_NOTRACK} -s {i.ip}/32 -j RETURN")
        out.append(f"-A {CHAIN_NOTRACK} -d {i.ip}/32 -j RETURN")
    out.append(f'-A {CHAIN_NOTRACK} -m comment --comment "{COMMENT} client side: not tracked" -j CT --notrack')
    out += ["COMMIT", "*filter", f":{CHAIN_OUT} - [0:0]", f":{CHAIN_IN} - [0:0]"]
    out.append(f"-A OUTPUT -p tcp -j {CHAIN_OUT}")
    out.append(f"-A INPUT -p tcp -j {CHAIN_IN}")
    for i in insts:
        out.append(
            f"-A {CHAIN_OUT} -d {i.ip}/32 -p tcp --syn -m conntrack ! --ctstatus CONFIRMED "
            f'-m comment --comment "{COMMENT} attempt {i.name}"'
        )
        out.append(
            f"-A {CHAIN_IN} -s {i.ip}/32 -p tcp --tcp-flags SYN,ACK SYN,ACK "
            f"-m connbytes --connbytes 1:1 --connbytes-dir reply --connbytes-mode packets "
            f'-m comment --comment "{COMMENT} established {i.name}"'
        )
        out.append(
            f"-A {CHAIN_IN} -s {i.ip}/32 -p tcp --tcp-flags RST RST "
            f"-m connbytes --connbytes 1:1 --connbytes-dir reply --connbytes-mode packets "
            f'-m comment --comment "{COMMENT} refused {i.name}"'
        )
    out.append("COMMIT")
    return "\n".join(out) + "\n"
