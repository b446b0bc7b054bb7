"""The host's own network namespace is never touched: rules, routes, links, sysctls identical; no lab packet on it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lab import lifecycle, rpc
from lab.lab import Lab
from tests.conftest import TOPOLOGIES, unique_lab_name

pytestmark = pytest.mark.root

# Counters and caches that change on their own, whatever the lab does.
VOLATILE_SYSCTLS = (
    "nf_conntrack_count",
    "fib_multipath",
    "neigh/default/",
    "flush",
    "tcp_fastopen_key",
    "ip_local_reserved",
)


def sysctls() -> dict[str, str]:
    out = {}
    root = Path("/proc/sys/net")
    for path in root.rglob("*"):
        key = str(path.relative_to("/proc/sys"))
        if not path.is_file() or any(v in key for v in VOLATILE_SYSCTLS) or not os.access(path, os.R_OK):
            continue
        try:
            out[key] = path.read_text()
        except OSError:
            continue
    return out


def snapshot() -> dict[str, object]:
    def run(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    return {
        "iptables-save": "\n".join(ln for ln in run("iptables-save").splitlines() if not ln.startswith("#")),
        "nft list ruleset": run("nft", "list", "ruleset"),
        "ip route (all tables)": run("ip", "route", "show", "table", "all"),
        "ip rule": run("ip", "rule"),
        "ip link": run("ip", "-o", "link"),
        "ip addr": run("ip", "-o", "addr"),
        "sysctls": sysctls(),
    }


def test_a_lab_never_touches_the_hosts_namespace():
    before = snapshot()
    lab_cidrs = ["10.10.0.0/16", "172.20.0.0/16", "100.96.0.0/11", "169.254.100.0/30"]
    bpf = " or ".join(f"net {c}" for c in lab_cidrs)
    capture = subprocess.Popen(
        ["tcpdump", "-i", "any", "-n", "-l", "-p", bpf], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.5)  # let tcpdump attach before traffic starts
    name = unique_lab_name("h")
    try:
        lab = lifecycle.prepare(TOPOLOGIES / "default.yaml", name, time_scale=0.1)
        lifecycle.up(lab)
        lab = Lab.load(name)
        for listener in lab.topology.elb.listeners:
            for elb in lab.topology.elb_nodes:
                rpc.call(lab, listener.service, "echo", ["4096"], rpc.resolve(lab, listener.service, "elb", elb.name))
        time.sleep(1.5)  # a round of health checks at 1 s intervals
    finally:
        lifecycle.down(name)
        capture.terminate()
        packets, stats = capture.communicate(timeout=10)
    after = snapshot()
    for key in before:
        if key == "sysctls":
            changed = {k: (v, after[key].get(k)) for k, v in before[key].items() if after[key].get(k) != v}
            assert not changed, f"host sysctls changed: {changed}"
        else:
            assert after[key] == before[key], f"host {key} changed"
    assert packets.strip() == "", f"lab traffic seen in the host's namespace:\n{packets[:2000]}"
    assert "0 packets captured" in stats, stats
