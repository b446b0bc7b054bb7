"""Conntrack entries of one host (`conntrack -L -o xml`): original and reply tuples, and what NAT they show."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from lab.errors import LabError
from lab.hosts import Host


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int
    dport: int

    def __str__(self) -> str:
        return f"{self.src}:{self.sport} -> {self.dst}:{self.dport}"

    def reversed(self) -> Tuple:
        return Tuple(self.dst, self.src, self.dport, self.sport)


@dataclass(frozen=True)
class Flow:
    """One conntrack entry. `original` is the first packet as it arrived; `reply` what the answer looks like."""

    original: Tuple
    reply: Tuple
    state: str  # ESTABLISHED, TIME_WAIT, SYN_SENT, ... ("" for protocols without state)
    timeout: int
    assured: bool
    mark: int
    id: str

    @property
    def dnat(self) -> bool:
        """The destination was rewritten: replies come from somewhere other than where the packet was sent."""
        return (self.reply.src, self.reply.sport) != (self.original.dst, self.original.dport)

    @property
    def snat(self) -> bool:
        """The source was rewritten (MASQUERADE): replies go to this host, not to the original sender."""
        return (self.reply.dst, self.reply.dport) != (self.original.src, self.original.sport)

    def to_json(self) -> dict[str, Any]:
        return {
            "original": str(self.original),
            "reply": str(self.reply),
            "state": self.state,
            "timeout_s": self.timeout,
            "assured": self.assured,
            "dnat": f"{self.reply.src}:{self.reply.sport}" if self.dnat else None,
            "snat": f"{self.reply.dst}:{self.reply.dport}" if self.snat else None,
        }

    def conntrack_line(self) -> str:
        """The entry as `conntrack -L` prints it (the way a user will see it on a node)."""
        o, r = self.original, self.reply
        return (
            f"tcp {self.state} src={o.src} dst={o.dst} sport={o.sport} dport={o.dport} "
            f"src={r.src} dst={r.dst} sport={r.sport} dport={r.dport}" + (" [ASSURED]" if self.assured else "")
        )


def _tuple(meta: ET.Element) -> Tuple | None:
    l3, l4 = meta.find("layer3"), meta.find("layer4")
    if l3 is None or l4 is None or l4.find("sport") is None:
        return None
    return Tuple(
        src=l3.findtext("src", ""),
        dst=l3.findtext("dst", ""),
        sport=int(l4.findtext("sport", "0")),
        dport=int(l4.findtext("dport", "0")),
    )


def parse_xml(text: str) -> list[Flow]:
    """Flows with ports (TCP, UDP) from `conntrack -L -o xml`; others are skipped."""
    text = text.strip()
    if not text:
        return []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise LabError(f"cannot read `conntrack -L -o xml` output: {exc}") from None
    flows = []
    for flow in root.iter("flow"):
        metas = {m.get("direction"): m for m in flow.findall("meta")}
        orig = _tuple(metas["original"]) if "original" in metas else None
        reply = _tuple(metas["reply"]) if "reply" in metas else None
        if orig is None or reply is None:
            continue
        ind = metas.get("independent")
        state = ind.findtext("state", "") if ind is not None else ""
        flows.append(
            Flow(
                original=orig,
                reply=reply,
                state=state,
                timeout=int(ind.findtext("timeout", "0")) if ind is not None else 0,
                assured=ind is not None and ind.find("assured") is not None,
                mark=int(ind.findtext("mark", "0")) if ind is not None else 0,
                id=ind.findtext("id", "") if ind is not None else "",
            )
        )
    return flows


def tcp_flows(host: Host, *, original: Tuple | None = None, reply: Tuple | None = None) -> list[Flow]:
    """TCP conntrack entries of `host` matching the given tuple(s), filtered by conntrack itself.

    Any field of a tuple may be empty / 0 to leave it out of the filter.
    """
    argv = ["conntrack", "-L", "-p", "tcp", "-o", "xml"]
    for t, flags in (
        (original, ("--orig-src", "--orig-dst", "--orig-port-src", "--orig-port-dst")),
        (reply, ("--reply-src", "--reply-dst", "--reply-port-src", "--reply-port-dst")),
    ):
        if t is None:
            continue
        for flag, value in zip(flags, (t.src, t.dst, t.sport, t.dport), strict=True):
            if value:
                argv += [flag, str(value)]
    proc = host.run(argv, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        raise LabError(f"{host.name}: conntrack -L failed: {detail[-1] if detail else proc.returncode}")
    return parse_xml(proc.stdout)
