"""A quick lab (--time-scale 0.1) runs the kernel's per-namespace TCP timers at its scale, seen with sysctl and
conntrack inside its namespaces; a full-scale lab and this machine's own namespace keep the kernel's defaults."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import in_host
from tests.integration.test_faults import connect_times
from tests.integration.test_metrics import capture

pytestmark = pytest.mark.root

CT = "net.netfilter.nf_conntrack_tcp_timeout_"


def sysctl(lab: str, host: str, key: str) -> int:
    return int(in_host(lab, host, "sysctl", "-n", key).strip())


def own_namespace(key: str) -> str:
    return Path("/proc/sys/" + key.replace(".", "/")).read_text().strip()


def test_quick_lab_scales_the_kernels_timers_in_its_namespaces(make_lab):
    keys = [CT + "syn_sent", CT + "time_wait", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_syn_retries"]
    machine = {key: own_namespace(key) for key in keys}
    lab = make_lab("seed-2017.yaml", time_scale=0.1)
    for node in ("node-a1", "node-b1", "node-c1"):
        assert sysctl(lab.name, node, CT + "syn_sent") == 12  # the kernel's 120 s
        assert sysctl(lab.name, node, CT + "syn_recv") == 6
        assert sysctl(lab.name, node, CT + "time_wait") == 12
        assert sysctl(lab.name, node, CT + "established") == 8640  # kube-proxy's 24 h
    for host in ("apollo-1", "elb-a1", "accounts-0"):
        assert sysctl(lab.name, host, "net.ipv4.tcp_fin_timeout") == 6
        assert sysctl(lab.name, host, "net.ipv4.tcp_syn_retries") == 3
        assert sysctl(lab.name, host, "net.ipv4.tcp_synack_retries") == 2

    # The timers are live: a closed connection through a node leaves an entry that expires within 12 s.
    node, port = "node-a1", lab.topology.service("accounts").node_port
    assert connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), 1)[0] is not None
    entry = ""
    for _ in range(50):
        listing = in_host(lab.name, node, "conntrack", "-L", "-p", "tcp", "--dport", str(port))
        entry = next((line for line in listing.splitlines() if " TIME_WAIT " in line), "")
        if entry:
            break
        time.sleep(0.1)
    assert entry, f"no TIME_WAIT entry on {node}: {listing}"
    assert int(entry.split()[2]) <= 12, entry  # "tcp 6 <seconds left> TIME_WAIT ..."
    assert {key: own_namespace(key) for key in keys} == machine  # this machine's namespace untouched


def test_full_scale_lab_keeps_the_kernels_defaults(make_lab):
    lab = make_lab("seed-2017.yaml")
    assert sysctl(lab.name, "node-a1", CT + "syn_sent") == 120
    assert sysctl(lab.name, "node-a1", CT + "time_wait") == 120
    assert sysctl(lab.name, "apollo-1", "net.ipv4.tcp_fin_timeout") == 60
    assert sysctl(lab.name, "elb-a1", "net.ipv4.tcp_syn_retries") == 6


def test_lost_syns_are_resent_after_1_3_and_7_s_as_on_the_seeds_kernels(make_lab, tmp_path):
    """Linux 6.5+ resends the first SYNs at 1 s intervals (tcp_syn_linear_timeouts=4); the lab sets 0 where the
    kernel has it, so a lost SYN costs 1 s, then 3 s, then 7 s, as the 2017 nodes' kernels did."""
    key = "net.ipv4.tcp_syn_linear_timeouts"
    if not Path("/proc/sys/" + key.replace(".", "/")).exists():
        pytest.skip(f"this kernel has no {key}: its SYN retransmits back off exponentially already")
    machine = own_namespace(key)
    lab = make_lab()
    assert sysctl(lab.name, "apollo-1", key) == 0 and sysctl(lab.name, "elb-a1", key) == 0
    node, port = "node-a1", lab.topology.service("accounts").node_port
    in_host(lab.name, node, "iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", str(port), "--syn",
            "-j", "DROP")  # fmt: skip
    pcap = tmp_path / "syn.pcap"
    with capture(lab.name, node, pcap, f"tcp dst port {port} and tcp[tcpflags] & tcp-syn != 0"):
        assert connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), 1, timeout=8.5)[0] is None
    out = subprocess.run(["tcpdump", "-nn", "-tt", "-r", str(pcap)], capture_output=True, text=True).stdout
    times = [float(line.split()[0]) for line in out.splitlines() if line.strip()]
    gaps = [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]
    assert len(times) == 4 and pytest.approx(gaps, abs=0.3) == [1.0, 2.0, 4.0], out  # SYN at 0, 1, 3, 7 s
    assert own_namespace(key) == machine  # this machine's namespace untouched
