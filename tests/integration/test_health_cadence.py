"""Health checks at the ELB's cadence: each ELB node starts a check of each instance every interval, whether the
check passes, is refused or times out. Counted with tcpdump inside the Kubernetes nodes (one SYN source port per
check: a timed-out check's retransmitted SYN is the same connect), with the ELB nodes' kernel accounting
(iptables-save -c) and HAProxy's view of the instances (its stats socket)."""

from __future__ import annotations

import re
import subprocess
import time
from collections import Counter

import pytest

from lab.haproxy_stats import instance_health, show_stat
from lab.render.accounting import CHAIN_OUT
from tests.conftest import in_host, ns

pytestmark = pytest.mark.root

SCALE = 0.25  # interval 2.5 s, timeout 1.25 s, unhealthy after 6 failures (15 s)
WINDOW = 30.0  # seconds of capture: 12 checks per ELB node per instance at the ELB's cadence
SYN_ONLY = "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"
_SYN = re.compile(r" IP (\d+\.\d+\.\d+\.\d+)\.(\d+) > \d+\.\d+\.\d+\.\d+\.\d+: ")


def _attempts(lab, elb: str) -> dict[str, int]:
    """The ELB node's kernel count of connect attempts per instance (the accounting BackendConnectionErrors uses)."""
    out = {}
    for line in in_host(lab.name, elb, "iptables-save", "-c", "-t", "filter").splitlines():
        m = re.match(rf"\[(\d+):\d+\] -A {CHAIN_OUT} .* attempt (\S+?)\"?$", line)
        if m:
            out[m[2]] = int(m[1])
    return out


def test_checks_start_every_interval_whether_refused_or_timed_out(make_lab):
    lab = make_lab("default.yaml", ["elb.cross_zone=true"], time_scale=SCALE, name="hcc1")
    hc = lab.topology.elb.health_check
    interval, port = hc.interval * SCALE, str(lab.topology.health_check_port)
    # node-b1 refuses the check (a reset for the NodePort's connections, wherever kube-proxy sends them);
    # node-c1 drops it before conntrack sees it, so the check times out.
    for chain in ("INPUT", "FORWARD"):
        in_host(lab.name, "node-b1", "iptables", "-I", chain, "-p", "tcp", "-m", "conntrack", "--ctorigdstport", port,
                "-j", "REJECT", "--reject-with", "tcp-reset")  # fmt: skip
    in_host(
        lab.name, "node-c1", "iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", port, "-j", "DROP"
    )

    elb_ips = {str(lab.plan.ip(e.name)): e.name for e in lab.topology.elb_nodes}
    nodes = ["node-a1", "node-b1", "node-c1"]
    before = {e: _attempts(lab, e) for e in elb_ips.values()}
    captures = {}
    for node in nodes:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns(lab.name, node), "timeout", "-s", "INT", f"{WINDOW:g}",
             "tcpdump", "-i", "any", "-nn", "-l", "-q", f"tcp dst port {port} and {SYN_ONLY}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while "listening on" not in proc.stderr.readline():
            pass
        captures[node] = proc
    checks: dict[str, Counter] = {}
    for node, proc in captures.items():
        out, _ = proc.communicate(timeout=WINDOW + 20)
        connects = {m.groups() for m in map(_SYN.search, out.splitlines()) if m}  # (source ip, source port)
        checks[node] = Counter(elb_ips.get(ip, ip) for ip, _port in connects)
    after = {e: _attempts(lab, e) for e in elb_ips.values()}

    expected = WINDOW / interval  # 12; HAProxy's own check made a timed-out one every interval + timeout: 8
    for node in nodes:
        assert set(checks[node]) == set(elb_ips.values()), (node, checks[node])  # only the ELB nodes' checks
        for elb, count in checks[node].items():
            assert abs(count - expected) <= 1, (node, elb, count, expected)
            # the ELB node's kernel counted the same connects (counters read just before and after the capture)
            assert abs((after[elb][node] - before[elb][node]) - count) <= 2, (node, elb, before, after)

    # HAProxy routes by the checker's word: node-b1 and node-c1 are out of service after 6 failures (15 s).
    deadline = time.monotonic() + 30
    while True:
        views = {e: instance_health(show_stat(lab.backend.elb_stats_socket(lab, e))) for e in elb_ips.values()}
        states = {(e, i): v["state"] for e, view in views.items() for i, v in view.items()}
        if all(s == ("InService" if i == "node-a1" else "OutOfService") for (e, i), s in states.items()):
            break
        assert time.monotonic() < deadline, views
        time.sleep(0.5)
    view = views["elb-a1"]
    assert view["node-b1"]["check"].startswith("refused in ") and view["node-c1"]["check"].startswith("timeout in ")
    assert view["node-a1"]["status"] == "UP" and view["node-c1"]["status"].startswith("DOWN")
    # nothing of HAProxy's agent check leaves the ELB node: its connections are on loopback only
    sockets = in_host(lab.name, "elb-a1", "ss", "-tan", "sport = :8406 or dport = :8406")
    assert all("127.0.0.1:" in ln for ln in sockets.splitlines()[1:]), sockets
