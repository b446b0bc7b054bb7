"""The node toolbox SREs reach for (conntrack, nstat, ss, iptables-save -c): pure parsers plus thin runners on a Host.

Parsers take the tool's text output and return plain data, so they are tested on captured real outputs
without root. Runners take any `Host` handle (a netns file: netns backend or a container's
/proc/<pid>/ns/net) and run the real tool inside it; they never touch this machine's own namespace.

Stable API (used by the metrics recorder and by `lab diagnose`):
    parse_conntrack_stats(text) -> dict[str, int]       conntrack -S, per-cpu lines summed
    parse_conntrack_count(text) -> int                  conntrack -C
    parse_conntrack_census(text) -> dict                conntrack -L -p tcp: entries by state, assured, longest
    parse_nstat(text) -> dict[str, int]                 nstat -az [--json]
    parse_ss_summary(text) -> SocketSummary             ss -s
    parse_ss_listen(text) -> list[ListenSocket]         ss -ltn (accept queue and backlog)
    parse_iptables_counters(text, prefix) -> list[RuleCounter]   iptables-save -c
    chain_packets(rules) -> dict[(table, chain), int]   packets per chain (sum of its rules)
    conntrack_stats(host), conntrack_count(host), conntrack_fill(host), conntrack_census(host), nstat(host, names),
    ss_summary(host), ss_listen(host), iptables_counters(host, prefix)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lab.errors import LabError
from lab.hosts import Host

# The counters an SRE reads first on a node (DOMAIN.md, "Tools SREs use on a node").
CONNTRACK_STATS = ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error", "search_restart")
TCP_COUNTERS = (
    "TcpExtTCPSynRetrans",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpAttemptFails",
    "TcpEstabResets",
    "TcpActiveOpens",
    "TcpPassiveOpens",
    "TcpOutRsts",
    "TcpRetransSegs",
)


# --- conntrack -S / -C ---


def parse_conntrack_stats(text: str) -> dict[str, int]:
    """`conntrack -S`: one `cpu=N key=value ...` line per CPU; returns each key summed over CPUs.

    Keys are whatever this kernel reports (found, invalid, insert, insert_failed, drop, early_drop,
    error, search_restart, clash_resolve, chaintoolong on 6.x; older kernels add entries, searched,
    new, delete...), so a kernel with other counters still parses.
    """
    totals: dict[str, int] = {}
    seen = False
    for line in text.splitlines():
        pairs = re.findall(r"([a-z_]+)=(\d+)", line)
        if not pairs or pairs[0][0] != "cpu":
            continue
        seen = True
        for key, value in pairs[1:]:
            totals[key] = totals.get(key, 0) + int(value)
    if not seen:
        raise ValueError(f"not `conntrack -S` output: {text[:80]!r}")
    return totals


def parse_conntrack_count(text: str) -> int:
    """`conntrack -C`: the number of entries in this namespace's table."""
    value = text.strip()
    if not value.isdigit():
        raise ValueError(f"not `conntrack -C` output: {text[:80]!r}")
    return int(value)


# --- nstat ---


def parse_conntrack_census(text: str) -> dict[str, object]:
    """`conntrack -L -p tcp`: what holds a table - entries by TCP state, how many are ASSURED (never evicted
    to make room: a full table of them drops new SYNs), and the longest time left (s) with its state.

    Line shape: `tcp 6 <seconds left> <STATE> src=... [UNREPLIED] src=... [ASSURED] mark=0 use=1`.
    """
    by_state: dict[str, int] = {}
    entries = assured = longest = 0
    longest_state = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != "tcp" or not fields[2].isdigit():
            continue
        entries += 1
        left, state = int(fields[2]), fields[3]
        by_state[state] = by_state.get(state, 0) + 1
        assured += "[ASSURED]" in fields
        if left > longest:
            longest, longest_state = left, state
    return {
        "entries": entries,
        "assured": assured,
        "by_state": dict(sorted(by_state.items(), key=lambda kv: -kv[1])),
        "longest_s": longest,
        "longest_state": longest_state,
    }


def parse_nstat(text: str) -> dict[str, int]:
    """`nstat -az` in JSON (`--json`) or text form: counter name -> value."""
    stripped = text.strip()
    if stripped.startswith("{"):
        data = json.loads(stripped)
        counters = data.get("kernel", data)
        return {k: int(v) for k, v in counters.items()}
    out: dict[str, int] = {}
    for line in stripped.splitlines():
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    if not out and stripped:
        raise ValueError(f"not nstat output: {text[:80]!r}")
    return out


# --- ss ---


@dataclass(frozen=True)
class SocketSummary:
    """`ss -s`: socket totals of one namespace."""

    total: int
    tcp: int
    tcp_estab: int
    tcp_closed: int
    tcp_orphaned: int
    tcp_timewait: int


def parse_ss_summary(text: str) -> SocketSummary:
    total = re.search(r"^Total:\s+(\d+)", text, re.M)
    tcp = re.search(
        r"^TCP:\s+(\d+)\s+\(estab (\d+), closed (\d+), orphaned (\d+), (?:synrecv \d+, )?timewait (\d+)", text, re.M
    )
    if not total or not tcp:
        raise ValueError(f"not `ss -s` output: {text[:80]!r}")
    n = [int(x) for x in tcp.groups()]
    return SocketSummary(int(total.group(1)), n[0], n[1], n[2], n[3], n[4])


@dataclass(frozen=True)
class ListenSocket:
    """One listening TCP socket: its accept queue now (`queued`) and its backlog (ss: Recv-Q / Send-Q)."""

    address: str
    port: int
    queued: int
    backlog: int

    @property
    def full(self) -> bool:
        # The kernel drops a SYN/ACK-completed connection once the queue holds more than backlog entries.
        return self.queued > self.backlog


def _split_endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if "%" in host:  # 0.0.0.0%lo: bound to a device
        host = host.split("%", 1)[0]
    return host, int(port) if port.isdigit() else 0


def parse_ss_listen(text: str) -> list[ListenSocket]:
    """`ss -ltn` (with or without the header line)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[0] != "LISTEN":
            continue
        address, port = _split_endpoint(parts[3])
        out.append(ListenSocket(address=address, port=port, queued=int(parts[1]), backlog=int(parts[2])))
    return out


# --- iptables-save -c ---


@dataclass(frozen=True)
class RuleCounter:
    """One rule's packet and byte counters from `iptables-save -c`; `rule` is the rule without `-A CHAIN`."""

    table: str
    chain: str
    packets: int
    bytes: int
    rule: str


_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+)\s*(.*)$")


def parse_iptables_counters(text: str, prefix: str = "KUBE-") -> list[RuleCounter]:
    """Rules of chains whose name starts with `prefix` ("" for all), in file order, with their counters."""
    table = ""
    out = []
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        m = _RULE.match(line)
        if m and m.group(3).startswith(prefix):
            out.append(RuleCounter(table, m.group(3), int(m.group(1)), int(m.group(2)), m.group(4)))
    return out


def chain_packets(rules: Iterable[RuleCounter]) -> dict[tuple[str, str], int]:
    """Packets per (table, chain), summed over the chain's rules (a packet leaving by rule 1 counts once)."""
    out: dict[tuple[str, str], int] = {}
    for r in rules:
        out[(r.table, r.chain)] = out.get((r.table, r.chain), 0) + r.packets
    return out


# --- runners: the real tools inside a lab host ---


def _run(host: Host, argv: list[str]) -> str:
    proc = host.run(argv, check=False, timeout=20)
    if proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        raise LabError(f"{host.name}: `{' '.join(argv)}` failed: {err[-1] if err else proc.returncode}")
    return proc.stdout


def conntrack_stats(host: Host) -> dict[str, int]:
    return parse_conntrack_stats(_run(host, ["conntrack", "-S"]))


def conntrack_count(host: Host) -> int:
    return parse_conntrack_count(_run(host, ["conntrack", "-C"]))


def conntrack_fill(host: Host) -> dict[str, int]:
    """nf_conntrack_count of this namespace and nf_conntrack_max (the table-full check compares these two)."""

    def read() -> dict[str, int]:
        base = "/proc/sys/net/netfilter/"
        try:
            with open(base + "nf_conntrack_count") as c, open(base + "nf_conntrack_max") as m:
                return {"count": int(c.read()), "max": int(m.read())}
        except FileNotFoundError:  # conntrack not loaded for this namespace yet: nothing tracked
            return {"count": 0, "max": 0}

    return host.in_netns(read)


def conntrack_census(host: Host) -> dict[str, object]:
    """The TCP entries of traffic in this namespace's table (conntrack mark 0: a fault's filler entries carry
    their own mark). The kernel filters by mark, so this stays fast (~0.1 s) beside a quarter million fillers."""
    return parse_conntrack_census(_run(host, ["conntrack", "-L", "-p", "tcp", "--mark", "0"]))


def nstat(host: Host, names: Iterable[str] | None = None) -> dict[str, int]:
    """Absolute kernel counters of the host's namespace (`nstat -a -s -z`: no history file read or written)."""
    wanted = list(names or [])
    return parse_nstat(_run(host, ["nstat", "-a", "-s", "-z", "--json", *wanted]))


def ss_summary(host: Host) -> SocketSummary:
    return parse_ss_summary(_run(host, ["ss", "-s"]))


def ss_listen(host: Host) -> list[ListenSocket]:
    return parse_ss_listen(_run(host, ["ss", "-ltnH"]))


def iptables_counters(host: Host, prefix: str = "KUBE-") -> list[RuleCounter]:
    return parse_iptables_counters(_run(host, ["iptables-save", "-c"]), prefix)
