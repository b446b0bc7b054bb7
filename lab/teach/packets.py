"""What traced packets say: SYNs and answers, the rules they matched in plain words, where one stopped. Pure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab.render.kubeproxy import describe_rule
from lab.render.plan import HostPlan, NetworkPlan
from lab.teach.flows import Tuple
from lab.teach.nftrace import TracedPacket
from lab.teach.tracedata import RuleKey


def is_syn(p: TracedPacket) -> bool:
    return "SYN" in p.first.flags and "ACK" not in p.first.flags


def is_answer(p: TracedPacket) -> bool:
    return "RST" in p.first.flags or ("SYN" in p.first.flags and "ACK" in p.first.flags)


def select(packets: list[TracedPacket], t: Tuple, want: Callable[[TracedPacket], bool]) -> list[TracedPacket]:
    """The packets of one direction of one connection (by its tuple) that `want` keeps."""
    return [p for p in packets if want(p) and p.is_flow(t.src, t.sport, t.dst, t.dport)]


def host_by_ip(plan: NetworkPlan, ip: str) -> HostPlan | None:
    for h in plan.hosts:
        if h.ip is not None and str(h.ip) == ip:
            return h
    return None


def matched_rules(packet: TracedPacket, deltas: dict[RuleKey, int] | None = None) -> list[dict[str, Any]]:
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


def kube_chains(packet: TracedPacket) -> list[str]:
    """KUBE-* chains the packet went through, in order (a chain counts when a rule in it matched or led to it)."""
    seen: list[str] = []
    for step in packet.rules():
        for chain in (step.chain, step.target):
            if chain.startswith("KUBE-") and chain not in seen:
                seen.append(chain)
    return seen


def dnat_target(packet: TracedPacket) -> str | None:
    """The ip:port a DNAT rule the packet matched sent it to."""
    for step in packet.rules():
        words = step.rule.split()
        if "DNAT" in words and "--to-destination" in words:
            return words[words.index("--to-destination") + 1]
    return None


def conntrack_words(state: dict[str, Any] | None) -> str | None:
    """A node's conntrack table as `conntrack -S` and the fill show it (None: it was not read)."""
    if state is None:
        return None
    if "error" in state:
        return f"conntrack -S unreadable: {state['error']}"
    stats, fill = state.get("stats", {}), state.get("fill", {})
    full = f"{fill['count']} of {fill['max']} entries" if fill.get("max") else "table size unknown"
    return f"`conntrack -S` drop={stats.get('drop', 0)}; table {full}"


def where_it_stopped(packet: TracedPacket, conntrack: str | None = None, tracked: bool = False) -> str | None:
    """Plain words for a SYN that did not get through this node, or None if it did.

    `conntrack`: the node's table in words, quoted when conntrack is what dropped it. `tracked`: conntrack has an
    entry for it, so an empty trace cannot mean conntrack dropped it (the rules are then invisible to nftables
    tracing: iptables-legacy).
    """
    rules = packet.rules()
    if not rules and tracked:
        return None
    if not rules:
        why = (
            "the SYN arrived but never reached the nat table: conntrack dropped it before any rule, which is "
            "what a full conntrack table does"
        )
        return why + (f" ({conntrack})" if conntrack else "")
    last = rules[-1]
    if last.verdict == "DROP":
        return f"dropped by {last.table} {last.chain}: {describe_rule(last.rule) if last.rule else 'policy DROP'}"
    return None


def attempt_lines(plan: NetworkPlan, syns: list[TracedPacket], packets: list[TracedPacket]) -> list[str]:
    """What became of each connect attempt (SYN) known only from the trace: its DNAT, and what answered.

    A connection refused by the pod leaves no conntrack entry (a RST to a SYN removes it at once), so the
    DNAT comes from the traced rule and the answer from the traced RST of that pod address.
    """
    lines = []
    for i, syn in enumerate(syns, 1):
        f = syn.first
        sent = f"{f.get('SRC')}:{f.get('SPORT')} -> {f.get('DST')}:{f.get('DPORT')}"
        stopped = where_it_stopped(syn)
        dnat = dnat_target(syn)
        if stopped or not dnat:
            lines.append(f"attempt {i}: {sent}: {stopped or 'no DNAT rule matched'}.")
            continue
        ip, _, port = dnat.rpartition(":")
        pod = host_by_ip(plan, ip)
        answers = [p for p in packets if is_answer(p) and (p.first.get("SRC"), p.first.get("SPORT")) == (ip, port)]
        if any("RST" in a.first.flags for a in answers):
            answer = "that address answered with a RST: nothing listens there (the pod's server is down)"
        elif answers:
            answer = "it answered (SYN-ACK)"
        else:
            answer = "no answer came back"
        lines.append(f"attempt {i}: {sent}, DNAT to {pod.name + ' ' if pod else ''}{dnat}: {answer}.")
    return lines
