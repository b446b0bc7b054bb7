"""Backend connection accounting in an ELB node's own kernel: every connect attempt to an instance, and its fate.

CloudWatch's BackendConnectionErrors counts every connection the ELB failed to establish with an
instance, health checks and retries included. HAProxy's counters cannot give that (`chkfail` stops once
a server is DOWN, so an instance that is down for good would show no error floor), so the ELB node's
kernel counts instead, with iptables rules in the ELB namespace (lab.render.accounting renders them, every
backend installs them before HAProxy starts, and this module reads them on any Host handle):

- attempt:     the first SYN of each new connection to the instance (`! --ctstatus CONFIRMED`: SYN
               retransmits of the same attempt are not new attempts);
- established: the first SYN-ACK back (connbytes 1:1 in the reply direction);
- refused:     a RST as the first answer (port closed, or a REJECT on the way).

failed = attempts - established - still connecting (sockets in SYN-SENT, read with `ss`), so a dropped
SYN counts once, whether HAProxy gives up after its timeout or the kernel after its retries.

Only backend flows are tracked: client flows into the ELB are NOTRACK'd, and closed flows leave the
ELB's conntrack table after 10 s, so the instrument never fills the ELB node's table under load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lab.hosts import Host
from lab.render.accounting import COMMENT
from lab.toolbox import parse_iptables_counters


@dataclass
class BackendCounts:
    """Cumulative counts for one instance as seen from one ELB node, plus attempts in flight right now."""

    attempts: int = 0
    established: int = 0
    refused: int = 0
    connecting: int = 0

    @property
    def failed(self) -> int:
        return max(0, self.attempts - self.established - self.connecting)


_COMMENT = re.compile(rf'--comment "?{COMMENT} (attempt|established|refused) (\S+?)"?(\s|$)')
SEPARATOR = "=== lab-elb ==="


def _connecting(syn_sent_text: str) -> set[tuple[str, str]]:
    """(local, peer) of sockets in SYN-SENT, from `ss -Htn state syn-sent` (no state column with -H and a filter)."""
    out = set()
    for line in syn_sent_text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.add((parts[2], parts[3]))
    return out


def parse_counts(attempts_text: str, syn_sent: str, answers_text: str, ips: dict[str, str]) -> dict[str, BackendCounts]:
    """Counts per instance from two `iptables-save -c -t filter` dumps and the SYN-SENT sockets between them. Pure.

    Attempts come from the first dump, answers from the second, sockets from `ss` in between: an attempt
    counted in the first dump was either answered by the second or still connecting at `ss` (or it failed),
    so the failure estimate can lag by an attempt for one sample but never runs ahead. One dump is not
    enough: the kernel hands the chains over one after the other, and an attempt made while the dump is
    between them, answered before `ss` looks, would count as a failure that never happened.
    """
    out = {name: BackendCounts() for name in ips}
    for text, fields in ((attempts_text, {"attempt"}), (answers_text, {"established", "refused"})):
        for rule in parse_iptables_counters(text, prefix="LAB-ELB-"):
            m = _COMMENT.search(rule.rule)
            if not m or m.group(1) not in fields or m.group(2) not in out:
                continue
            field = {"attempt": "attempts"}.get(m.group(1), m.group(1))
            setattr(out[m.group(2)], field, getattr(out[m.group(2)], field) + rule.packets)
    by_ip = {ip: name for name, ip in ips.items()}
    for _, peer in _connecting(syn_sent):
        ip = peer.rpartition(":")[0].strip("[]")
        if ip in by_ip:
            out[by_ip[ip]].connecting += 1
    return out


def read_counts(host: Host, ips: dict[str, str]) -> dict[str, BackendCounts]:
    """Attempts, then the attempts in flight, then the answers: in this order, by one process in the ELB node."""
    dump = "iptables-save -c -t filter"
    script = f"{dump} && echo '{SEPARATOR}' && ss -Htn state syn-sent && echo '{SEPARATOR}' && {dump}"
    text = host.run(["sh", "-c", script], timeout=20).stdout
    attempts, syn_sent, answers = (text.split(SEPARATOR + "\n") + ["", ""])[:3]
    return parse_counts(attempts, syn_sent, answers, ips)


class ErrorSeries:
    """Per-interval failures from the cumulative estimate: never negative, and the sum stays exact.

    A failure estimate that dips (an attempt that was in flight at one sample) is carried as a deficit
    and taken off the next increase instead of showing as a negative count.
    """

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], int] = {}
        self.deficit: dict[tuple[str, str], int] = {}

    def step(self, key: tuple[str, str], cumulative: int) -> int:
        delta = cumulative - self.last.get(key, 0)
        self.last[key] = cumulative
        owed = self.deficit.get(key, 0)
        if delta < 0:
            self.deficit[key] = owed - delta
            return 0
        paid = min(owed, delta)
        self.deficit[key] = owed - paid
        return delta - paid
