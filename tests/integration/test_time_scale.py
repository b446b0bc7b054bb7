"""A quick lab (--time-scale 0.1) runs the kernel's per-namespace TCP timers at its scale, seen with sysctl and
conntrack inside its namespaces; a full-scale lab and this machine's own namespace keep the kernel's defaults."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import in_host
from tests.integration.test_faults import connect_times

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
