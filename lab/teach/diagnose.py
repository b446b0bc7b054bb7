"""`lab diagnose`: run the node toolbox on one host, compare with thresholds, say what is wrong in plain words.

Read-only: it runs conntrack -S / -C, nstat (without its history file), ss, iptables-save -c and reads
sysctls, twice `interval` seconds apart, so that it can tell "happening now" from "happened once". Works on any
Host handle, and on this machine's own namespace through LocalHost (`lab diagnose --local`, e.g. on a real
Kubernetes node). Severities: ok, info (worth knowing, not alarming), warning, critical.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import toolbox
from lab.errors import LabError
from lab.hosts import Host
from lab.lab import Lab

SEVERITIES = ("ok", "info", "warning", "critical")
ALARMING = ("warning", "critical")

# Thresholds (share of the table / of the port range / of the backlog).
CONNTRACK_WARN, CONNTRACK_CRIT = 0.75, 0.90
TIMEWAIT_WARN = 0.5
BACKLOG_WARN = 0.8


@dataclass(frozen=True)
class LocalHost(Host):
    """This machine's current network namespace, for read-only checks: commands run directly, no setns."""

    def exists(self) -> bool:
        return True

    def argv(self, cmd: Sequence[str]) -> list[str]:
        return list(cmd)

    def in_netns(self, fn: Callable[[], Any]) -> Any:
        return fn()

    def sysctl(self, key: str) -> str:
        return Path("/proc/sys/" + key.replace(".", "/")).read_text().strip()


def local_host() -> LocalHost:
    return LocalHost(name="local", role="local", netns="/proc/self/ns/net")


@dataclass
class Check:
    id: str
    severity: str
    title: str
    command: str  # the exact command that shows it
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity,
            "title": self.title,
            "detail": self.detail,
            "command": self.command,
            "evidence": self.evidence,
        }


@dataclass
class _Sample:
    conntrack: dict[str, int] | None = None
    nstat: dict[str, int] | None = None
    rules: list[toolbox.RuleCounter] | None = None
    errors: dict[str, str] = field(default_factory=dict)


def _try(errors: dict[str, str], key: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (LabError, ValueError, OSError, subprocess.SubprocessError) as exc:
        errors[key] = str(exc)
        return None


def _sample(host: Host) -> _Sample:
    s = _Sample()
    s.conntrack = _try(s.errors, "conntrack -S", lambda: toolbox.conntrack_stats(host))
    s.nstat = _try(s.errors, "nstat", lambda: toolbox.nstat(host, toolbox.TCP_COUNTERS))
    s.rules = _try(s.errors, "iptables-save -c", lambda: toolbox.iptables_counters(host, ""))
    return s


def _sysctl(host: Host, key: str) -> str | None:
    try:
        return host.sysctl(key)
    except (OSError, LabError):
        return None


def diagnose_lab_host(
    lab_name: str, host: str, interval: float = 1.0, progress: Callable[[str], None] = lambda _msg: None
) -> dict[str, Any]:
    """diagnose() of a host of the lab `lab_name`; each command is shown as `lab exec HOST -n LAB -- ...`."""
    lab = Lab.load(lab_name)
    target = lab.host(host)
    progress("sampling the toolbox twice" if interval > 0 else "sampling the toolbox")
    return diagnose(target, interval, f"lab exec {host} -n {lab.name} -- ")


def diagnose(host: Host, interval: float = 1.0, cmd_prefix: str = "", kernel_log: bool = False) -> dict[str, Any]:
    """Every check on `host`; `cmd_prefix` goes before each command shown (e.g. "lab exec node-a1 -- ")."""
    if not host.exists():
        raise LabError(f"host {host.name}: its network namespace {host.netns} is gone (was the lab taken down?)")
    first = _sample(host)
    if first.conntrack is None and first.nstat is None and first.rules is None:
        problems = "; ".join(f"{k}: {v}" for k, v in first.errors.items())
        raise LabError(f"{host.name}: none of the tools ran ({problems}); is this root on Linux?")
    if interval > 0:
        time.sleep(interval)
    second = _sample(host) if interval > 0 else first
    fill = _try(second.errors, "conntrack count", lambda: toolbox.conntrack_fill(host))
    summary = _try(second.errors, "ss -s", lambda: toolbox.ss_summary(host))
    listen = _try(second.errors, "ss -ltn", lambda: toolbox.ss_listen(host))
    sysctls = {
        key: _sysctl(host, key)
        for key in (
            "net.netfilter.nf_conntrack_tcp_be_liberal",
            "net.ipv4.ip_local_port_range",
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
        )
    }
    p = cmd_prefix
    checks: list[Check] = []
    checks += _conntrack_checks(first, second, fill, interval, p)
    checks += _rule_checks(first, second, sysctls, interval, p)
    checks += _tcp_checks(first, second, summary, listen, sysctls, interval, p)
    if kernel_log:
        checks += _kernel_log_check()
    for key, err in {**first.errors, **second.errors}.items():
        checks.append(Check(f"unavailable:{key}", "info", f"could not run {key}: {err}", f"{p}{key}"))
    checks.sort(key=lambda c: -SEVERITIES.index(c.severity))
    worst = checks[0].severity if checks else "ok"
    return {
        "host": host.name,
        "verdict": worst if worst in ALARMING else "healthy",
        "interval_s": interval,
        "findings": [c.to_json() for c in checks if c.severity != "ok"],
        "checks": [c.to_json() for c in checks],
        "conntrack": {"fill": fill, "stats": second.conntrack},
        "tcp": second.nstat,
        "sockets": summary.__dict__ if summary else None,
        "sysctls": sysctls,
    }


def _delta(a: dict[str, int] | None, b: dict[str, int] | None, key: str) -> int:
    if not a or not b:
        return 0
    return max(0, b.get(key, 0) - a.get(key, 0))


def _now(delta: int, interval: float) -> str:
    return f"+{delta} in the last {interval:g} s" if interval > 0 else "one sample only"


def _conntrack_checks(a: _Sample, b: _Sample, fill: dict | None, interval: float, p: str) -> list[Check]:
    out: list[Check] = []
    stats = b.conntrack or {}
    drop, drop_now = stats.get("drop", 0), _delta(a.conntrack, b.conntrack, "drop")
    if fill and fill.get("max"):
        count, cmax = fill["count"], fill["max"]
        share = count / cmax
        title = f"conntrack table {share:.0%} full ({count} of {cmax} entries)"
        ev = {"count": count, "max": cmax, "drop": drop, "drop_now": drop_now}
        cmd = f"{p}conntrack -C; {p}sysctl net.netfilter.nf_conntrack_max; {p}conntrack -S"
        if share >= CONNTRACK_CRIT:
            free = cmax - count
            if drop_now:
                dropping = "new SYNs are being dropped"
            elif free <= 0:
                dropping = "the next new SYNs will be dropped"
            else:
                dropping = f"only {free} free entries: new SYNs are dropped as soon as they are used up"
            out.append(
                Check(
                    "conntrack-full",
                    "critical",
                    f"{title}: {dropping}",
                    cmd,
                    f"see `conntrack -S` drop={drop} ({_now(drop_now, interval)}). A full table drops the first packet "
                    "of every new connection silently, including the ELB's health checks: the client retries its "
                    "SYN after ~1 s, 3 s, 7 s; connections already open keep working.",
                    ev,
                )
            )
        elif share >= CONNTRACK_WARN:
            out.append(
                Check(
                    "conntrack-full",
                    "warning",
                    f"{title}: close to the limit",
                    cmd,
                    f"at 100% new connections are dropped. Each closed connection keeps its entry ~120 s "
                    f"(TIME_WAIT): the table sustains about {cmax // 120} new connections/s.",
                    ev,
                )
            )
        else:
            out.append(Check("conntrack-full", "ok", title, cmd, evidence=ev))
    if b.conntrack is not None:
        if drop_now:
            out.append(
                Check(
                    "conntrack-drop",
                    "critical",
                    f"conntrack is dropping packets now ({_now(drop_now, interval)}, drop={drop})",
                    f"{p}conntrack -S",
                    "packets that could not get a conntrack entry (table full) are dropped before any rule sees them.",
                    {"drop": drop, "drop_now": drop_now},
                )
            )
        elif drop:
            out.append(
                Check(
                    "conntrack-drop",
                    "warning",
                    f"conntrack dropped {drop} packets earlier (none in the last {interval:g} s)",
                    f"{p}conntrack -S",
                    "the table was full at some point; check whether it is filling up again.",
                    {"drop": drop},
                )
            )
        else:
            out.append(Check("conntrack-drop", "ok", "conntrack drops no packets (drop=0)", f"{p}conntrack -S"))
        early, early_now = stats.get("early_drop", 0), _delta(a.conntrack, b.conntrack, "early_drop")
        if early:
            out.append(
                Check(
                    "conntrack-early-drop",
                    "warning" if early_now else "info",
                    f"conntrack evicted {early} unconfirmed entries to make room ({_now(early_now, interval)})",
                    f"{p}conntrack -S",
                    "the table was full enough that the kernel threw out entries of connections not yet ASSURED.",
                    {"early_drop": early, "early_drop_now": early_now},
                )
            )
        failed, failed_now = stats.get("insert_failed", 0), _delta(a.conntrack, b.conntrack, "insert_failed")
        if failed:
            out.append(
                Check(
                    "conntrack-insert-failed",
                    "warning",
                    f"{failed} conntrack inserts failed ({_now(failed_now, interval)}): the NAT source-port race",
                    f"{p}conntrack -S",
                    "two connections SNATed at the same moment got the same source port; the loser's packet is dropped "
                    "and its SYN retried ~1 s later. MASQUERADE --random-fully avoids it.",
                    {"insert_failed": failed, "insert_failed_now": failed_now},
                )
            )
        else:
            out.append(
                Check(
                    "conntrack-insert-failed", "ok", "no failed conntrack inserts (insert_failed=0)", f"{p}conntrack -S"
                )
            )
    return out


def _rule_checks(a: _Sample, b: _Sample, sysctls: dict, interval: float, p: str) -> list[Check]:
    if b.rules is None:
        return []
    kube = [r for r in b.rules if r.chain.startswith("KUBE-")]
    cmd = f"{p}iptables-save -c"
    if not kube:
        return [
            Check(
                "kube-proxy-rules",
                "info",
                "no KUBE-* iptables rules here: not a Kubernetes node, or kube-proxy in IPVS/nftables mode",
                cmd,
            )
        ]
    out = [Check("kube-proxy-rules", "ok", f"{len(kube)} kube-proxy rules (KUBE-* chains)", cmd)]
    before = {(r.table, r.chain, r.rule): r.packets for r in (a.rules or [])}

    def now(r: toolbox.RuleCounter) -> int:
        return max(0, r.packets - before.get((r.table, r.chain, r.rule), r.packets))

    invalid = [r for r in kube if "INVALID" in r.rule and r.rule.rstrip().endswith("-j DROP")]
    liberal = sysctls.get("net.netfilter.nf_conntrack_tcp_be_liberal") == "1"
    if invalid:
        dropped = sum(r.packets for r in invalid)
        fresh = sum(now(r) for r in invalid)
        if dropped:
            out.append(
                Check(
                    "invalid-drops",
                    "warning" if fresh else "info",
                    f"kube-proxy's INVALID rule dropped {dropped} packets ({_now(fresh, interval)})",
                    f"{cmd} -t filter | grep INVALID",
                    "out-of-window packets (late retransmissions, reordering): dropped here instead of reaching "
                    "the pod un-NATed and provoking a RST.",
                    {"packets": dropped, "now": fresh},
                )
            )
        else:
            out.append(Check("invalid-drops", "ok", "kube-proxy's INVALID drop rule is present, 0 packets", cmd))
    elif not liberal:
        out.append(
            Check(
                "invalid-rule-missing",
                "info",
                "no INVALID drop rule and nf_conntrack_tcp_be_liberal=0 (kube-proxy before 1.15?)",
                f"{cmd} -t filter | grep INVALID; {p}sysctl net.netfilter.nf_conntrack_tcp_be_liberal",
                "out-of-window packets are not un-NATed: they reach the pod with this node's address and the pod "
                "answers with a RST ('connection reset by peer', kubernetes#74839).",
            )
        )
    masq = [r for r in kube if "MASQUERADE" in r.rule]
    if masq and not any("--random-fully" in r.rule for r in masq):
        out.append(
            Check(
                "masquerade-not-random",
                "info",
                "MASQUERADE without --random-fully",
                f"{cmd} -t nat | grep MASQUERADE",
                "simultaneous SNATed connections can collide on a source port (conntrack -S insert_failed, ~1 s "
                "connect delays).",
            )
        )
    drops = [r for r in kube if r.rule.rstrip().endswith(("-j DROP", "-j REJECT")) and r not in invalid]
    hit = [r for r in drops if r.packets]
    for r in hit:
        comment = r.rule.split('--comment "', 1)[1].split('"', 1)[0] if '--comment "' in r.rule else ""
        fresh = now(r)
        out.append(
            Check(
                f"dropped:{r.chain}",
                "warning",
                f"{r.chain} dropped {r.packets} packets ({_now(fresh, interval)})"
                + (f": {comment}" if comment else ""),
                f"{cmd} -t {r.table} | grep -- '-A {r.chain}'",
                "kube-proxy drops NodePort traffic for a Local-policy service without a pod on this node (and marked "
                "packets in KUBE-FIREWALL); a load balancer still sending here gets connection errors.",
                {"table": r.table, "chain": r.chain, "packets": r.packets, "now": fresh},
            )
        )
    if drops and not hit:
        out.append(Check("kube-drops", "ok", "kube-proxy's DROP/REJECT rules matched 0 packets", cmd))
    return out


def _tcp_checks(a: _Sample, b: _Sample, summary, listen, sysctls: dict, interval: float, p: str) -> list[Check]:
    out: list[Check] = []
    if b.nstat is not None:
        cmd = f"{p}nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPSynRetrans"
        for key, words in (
            ("TcpExtListenOverflows", "a listening server's accept queue overflowed: completed connections dropped"),
            ("TcpExtListenDrops", "SYNs or handshakes dropped at a listening socket"),
        ):
            total, fresh = b.nstat.get(key, 0), _delta(a.nstat, b.nstat, key)
            if total:
                out.append(
                    Check(
                        f"nstat:{key}",
                        "critical" if fresh else "warning",
                        f"{key}={total} ({_now(fresh, interval)}): {words}",
                        cmd,
                        "the application accepts connections slower than they arrive (its backlog is full): "
                        "clients see SYN retransmissions and timeouts.",
                        {"total": total, "now": fresh},
                    )
                )
        syn, syn_now = b.nstat.get("TcpExtTCPSynRetrans", 0), _delta(a.nstat, b.nstat, "TcpExtTCPSynRetrans")
        if syn:
            out.append(
                Check(
                    "nstat:TcpExtTCPSynRetrans",
                    "warning" if syn_now else "info",
                    f"{syn} SYNs retransmitted by this host ({_now(syn_now, interval)})",
                    cmd,
                    "connections made from here waited for an answer and resent their SYN (after ~1 s, 3 s, 7 s): "
                    "the far end or the path dropped it.",
                    {"total": syn, "now": syn_now},
                )
            )
        if not any(c.id.startswith("nstat:") for c in out):
            out.append(Check("nstat", "ok", "no listen overflows, listen drops or SYN retransmissions", cmd))
    if summary is not None:
        lo, hi = _port_range(sysctls.get("net.ipv4.ip_local_port_range"))
        ports = hi - lo + 1
        share = summary.tcp_timewait / ports if ports > 0 else 0
        ev = {"timewait": summary.tcp_timewait, "estab": summary.tcp_estab, "ephemeral_ports": ports}
        if share >= TIMEWAIT_WARN:
            out.append(
                Check(
                    "timewait",
                    "warning",
                    f"{summary.tcp_timewait} sockets in TIME-WAIT: {share:.0%} of the {ports} ephemeral ports",
                    f"{p}ss -s",
                    "new outgoing connections to the same destination may fail with EADDRNOTAVAIL.",
                    ev,
                )
            )
        else:
            out.append(
                Check(
                    "timewait",
                    "ok",
                    f"{summary.tcp_estab} established, {summary.tcp_timewait} TIME-WAIT",
                    f"{p}ss -s",
                    evidence=ev,
                )
            )
    if listen is not None:
        for sock in listen:
            if sock.backlog and sock.queued >= BACKLOG_WARN * sock.backlog:
                out.append(
                    Check(
                        f"backlog:{sock.port}",
                        "critical" if sock.full else "warning",
                        f"listen queue of {sock.address}:{sock.port} holds {sock.queued} of {sock.backlog}",
                        f"{p}ss -ltn",
                        "the server is not accepting fast enough; once full, new connections are dropped.",
                        {"queued": sock.queued, "backlog": sock.backlog},
                    )
                )
    return out


def _port_range(text: str | None) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in (text or "").split())
        return lo, hi
    except ValueError:
        return 32768, 60999  # the kernel's default


def _kernel_log_check() -> list[Check]:
    """The kernel log is machine-wide, so this only runs for --local (a lab host would see every lab's lines)."""
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return [Check("dmesg", "info", f"could not read the kernel log: {exc}", "dmesg")]
    if proc.returncode != 0:
        return [Check("dmesg", "info", "could not read the kernel log (needs root)", "dmesg")]
    lines = [ln for ln in proc.stdout.splitlines() if "nf_conntrack: table full" in ln]
    if lines:
        return [
            Check(
                "dmesg-table-full",
                "warning",
                f"the kernel logged 'nf_conntrack: table full, dropping packet' {len(lines)} times",
                "dmesg | grep 'table full'",
                f"last: {lines[-1].strip()}",
                {"count": len(lines)},
            )
        ]
    return [
        Check("dmesg-table-full", "ok", "no 'nf_conntrack: table full' in the kernel log", "dmesg | grep 'table full'")
    ]
