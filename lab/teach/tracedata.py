"""The trace's data: the evidence one traced connection leaves (gathered once, all I/O done) and the hops told
from it. Pure; evidence round-trips through JSON so hop builders can be tested on recorded traces."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lab.models.topology import Topology
from lab.render.plan import NetworkPlan, build_plan
from lab.teach.elblog import ElbLogLine, parse_line
from lab.teach.flows import Flow, Tuple
from lab.teach.nftrace import TracedPacket, packets_from_lines

EVIDENCE_SCHEMA = 1

RuleKey = tuple[str, str, str]  # (table, chain, rule without "-A CHAIN ")
Counters = dict[str, dict[RuleKey, int]]  # node -> rule -> packets


@dataclass
class Hop:
    """One stop on the path, told in plain words, with the facts behind it and how to see them yourself."""

    kind: str  # client | elb | node | transit | pod | reply
    host: str
    az: str | None
    title: str
    says: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)  # for node hops: matched rules, in order
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
        return {
            "lab": self.lab,
            "service": self.service,
            "via": self.via,
            "ok": self.ok,
            "error": self.error,
            "summary": self.summary,
            "hops": [h.to_json() for h in self.hops],
        }


@dataclass
class Attempt:
    """The client's side of the traced connection: its socket, and what the pod answered."""

    source: str  # the host it started from
    local: tuple[str, int]
    dest: tuple[str, int]
    connect_ms: float | None = None
    error: str | None = None
    who: dict[str, Any] | None = None  # the pod's whoami answer
    rpc_ms: float | None = None


@dataclass
class Evidence:
    """Everything one trace read from the lab, from independent sources (see lab.teach.evidence)."""

    lab: str
    topology: Topology
    service: str
    via: str  # elb | node
    hop: str  # the ELB node or node the client addressed
    target: tuple[str, int]  # its address and port
    attempt: Attempt
    log_path: str  # the ELB node's connection log ("" with --via node)
    log_line: ElbLogLine | None
    entry: tuple[str, Flow] | None  # the node whose NodePort the connection hit, and its conntrack entry
    transit: tuple[str, Flow | None] | None  # the pod's node when kube-proxy sent it across, and its entry
    monitor: dict[str, list[str]]  # node -> nftables trace lines seen during the connection
    deltas: Counters  # node -> per-rule packet counter deltas over the trace
    conntrack: dict[str, dict[str, Any]]  # node -> {"stats", "fill"} or {"error"}, read after the connection
    elb_health: dict[str, Any] | None = (
        None  # the ELB node's health view ({"view"} or {"error"}) when it had no instance
    )

    @cached_property
    def plan(self) -> NetworkPlan:
        return build_plan(self.topology)

    @cached_property
    def packets(self) -> dict[str, list[TracedPacket]]:
        return {node: packets_from_lines(lines) for node, lines in self.monitor.items()}

    def to_json(self) -> dict[str, Any]:
        a = self.attempt
        return {
            "schema": EVIDENCE_SCHEMA,
            "lab": self.lab,
            "topology": self.topology.model_dump(mode="json"),
            "service": self.service,
            "via": self.via,
            "hop": self.hop,
            "target": list(self.target),
            "attempt": {
                "source": a.source,
                "local": list(a.local),
                "dest": list(a.dest),
                "connect_ms": a.connect_ms,
                "error": a.error,
                "who": a.who,
                "rpc_ms": a.rpc_ms,
            },
            "log_path": self.log_path,
            "log_line": self.log_line.raw if self.log_line else None,
            "entry": [self.entry[0], _flow_record(self.entry[1])] if self.entry else None,
            "transit": [self.transit[0], _flow_record(self.transit[1])] if self.transit else None,
            "monitor": self.monitor,
            "deltas": {node: [[*key, n] for key, n in rules.items()] for node, rules in self.deltas.items()},
            "conntrack": self.conntrack,
            "elb_health": self.elb_health,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        a = data["attempt"]
        entry, transit = data.get("entry"), data.get("transit")
        return cls(
            lab=data["lab"],
            topology=Topology.model_validate(data["topology"]),
            service=data["service"],
            via=data["via"],
            hop=data["hop"],
            target=(data["target"][0], int(data["target"][1])),
            attempt=Attempt(
                source=a["source"],
                local=(a["local"][0], int(a["local"][1])),
                dest=(a["dest"][0], int(a["dest"][1])),
                connect_ms=a.get("connect_ms"),
                error=a.get("error"),
                who=a.get("who"),
                rpc_ms=a.get("rpc_ms"),
            ),
            log_path=data.get("log_path", ""),
            log_line=parse_line(data["log_line"]) if data.get("log_line") else None,
            entry=(entry[0], _flow_from_record(entry[1])) if entry else None,
            transit=(transit[0], _flow_from_record(transit[1]) if transit[1] else None) if transit else None,
            monitor={node: list(lines) for node, lines in data.get("monitor", {}).items()},
            deltas={node: {(t, c, r): int(n) for t, c, r, n in rows} for node, rows in data.get("deltas", {}).items()},
            conntrack=data.get("conntrack", {}),
            elb_health=data.get("elb_health"),
        )


def _flow_record(flow: Flow | None) -> dict[str, Any] | None:
    if flow is None:
        return None
    o, r = flow.original, flow.reply
    return {
        "original": [o.src, o.dst, o.sport, o.dport],
        "reply": [r.src, r.dst, r.sport, r.dport],
        "state": flow.state,
        "timeout": flow.timeout,
        "assured": flow.assured,
        "mark": flow.mark,
        "id": flow.id,
    }


def _flow_from_record(rec: dict[str, Any]) -> Flow:
    def tup(v: list[Any]) -> Tuple:
        return Tuple(src=v[0], dst=v[1], sport=int(v[2]), dport=int(v[3]))

    return Flow(
        original=tup(rec["original"]),
        reply=tup(rec["reply"]),
        state=rec["state"],
        timeout=int(rec["timeout"]),
        assured=bool(rec["assured"]),
        mark=int(rec["mark"]),
        id=str(rec["id"]),
    )
