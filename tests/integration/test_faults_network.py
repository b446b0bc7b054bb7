"""cross-az and link faults: delay, loss, bandwidth and partition, measured with TCP connects, ping and tc."""

from __future__ import annotations

import re
import subprocess
import time
from shutil import which

import pytest
from labservices.client import client_on_socket, echo_payload

from lab import faults
from lab.errors import EnvironmentProblem
from lab.faults.ops import netem_available
from tests.conftest import in_host, ns
from tests.integration.test_faults import assert_same, connect_times, median_ms, rule_packets, snapshot
from tests.integration.test_faults_paths import check_of

pytestmark = pytest.mark.root

SAMPLES = 60  # connects per measurement; the median of 60 is steady on a busy 2-core machine


def _pod_in_other_az(lab, az: str, service: str = "accounts"):
    return next(p for p in lab.topology.pods_of(service) if lab.topology.node(p.node).az != az)


def test_cross_az_delay_adds_50ms_to_connects_across_azs_at_the_median(make_lab):
    lab = make_lab()
    remote = _pod_in_other_az(lab, "us-east-1a")
    across = (str(lab.plan.ip(remote.name)), 9090)  # elb-a1 (AZ a) -> a pod in AZ b: one crossing
    local_pod = next(p for p in lab.topology.pods if p.node == "node-a1")
    within = (str(lab.plan.ip(local_pod.name)), 9090)
    # Cluster policy's second hop: elb-c1 -> node-c1 (same AZ) -> DNAT to an accounts pod, all of them elsewhere.
    assert all(p.node != "node-c1" for p in lab.topology.pods_of("accounts"))
    second_hop = (str(lab.plan.ip("node-c1")), lab.topology.service("accounts").node_port)

    before = snapshot(lab)
    base = {k: median_ms(connect_times(lab, src, addr, SAMPLES)) for k, src, addr in
            (("across", "elb-a1", across), ("within", "elb-a1", within), ("hop", "elb-c1", second_hop))}  # fmt: skip
    result = faults.apply(lab, "cross-az", None, ["delay=50ms"])
    engine = result["fault"]["engine"]
    assert engine == ("netem" if netem_available(lab.host("rt-cluster")) else "nfqueue")
    slow = {k: median_ms(connect_times(lab, src, addr, SAMPLES)) for k, src, addr in
            (("across", "elb-a1", across), ("within", "elb-a1", within), ("hop", "elb-c1", second_hop))}  # fmt: skip

    assert 45 <= slow["across"] - base["across"] <= 55, (base, slow)
    assert 45 <= slow["hop"] - base["hop"] <= 55, (base, slow)
    assert slow["within"] - base["within"] < 5, (base, slow)
    if engine == "nfqueue":
        assert rule_packets(lab, "rt-cluster", "mangle", r"-j NFQUEUE") > 0

    faults.revert(lab)
    after = median_ms(connect_times(lab, "elb-a1", across, SAMPLES))
    assert after - base["across"] < 5
    assert_same(before, snapshot(lab))


def test_cross_az_loss_and_the_peering_link(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    elb = (str(lab.plan.ip("elb-b1")), 9090)  # the client VPC -> AZ b: over the peering link
    base = median_ms(connect_times(lab, "apollo-1", elb, 20))
    faults.apply(lab, "cross-az", "us-east-1b", ["delay=30ms", "peering=on", "loss=0.1%"])
    slow = median_ms(connect_times(lab, "apollo-1", elb, 20))
    assert 25 <= slow - base <= 35, (base, slow)  # client VPC -> ELB crosses the peering link
    saved = in_host(lab.name, "rt-cluster", "iptables-save", "-t", "mangle")
    assert "-i peering -o br-us-east-1b" in saved and "-i br-us-east-1a -o br-us-east-1c" not in saved
    assert "--probability 0.00100000" in saved
    faults.revert(lab)
    assert_same(before, snapshot(lab))


def _ping(lab, source: str, ip: str, count: int, interval: str = "0.01") -> tuple[float, float | None]:
    """(loss %, average RTT ms or None when nothing came back) of `ping` from a lab host."""
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1", ip]
    cmd = ["ip", "netns", "exec", ns(lab.name, source), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    summary = re.search(r"([\d.]+)% packet loss", proc.stdout)
    # A summary means ping ran (its exit 1 only says replies were lost, as the loss tests want); none: ping failed.
    if summary is None:
        missing = "" if which("ping") else " (ping is not installed: apt-get install iputils-ping, or make test-deps)"
        raise AssertionError(
            f"`{' '.join(argv)}` in {source} gave no summary (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip() or 'no output'}{missing}"
        )
    rtt = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    return float(summary.group(1)), float(rtt.group(1)) if rtt else None


def test_link_delay_and_bandwidth(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    node_ip = str(lab.plan.ip("node-a1"))
    faults.apply(lab, "link", "node-a1", ["delay=20ms", "bandwidth=20mbit"])
    loss, rtt = _ping(lab, "elb-a1", node_ip, 10, "0.05")
    assert loss == 0 and 20 <= rtt < 30, rtt
    # 1 MiB each way to a pod behind the link: tbf (rate 20Mbit, on both ends) holds packets back: overlimits
    pod = next(p.name for p in lab.topology.pods if p.node == "node-a1")
    sock = lab.host("elb-a1").connect((str(lab.plan.ip(pod)), 9090))
    payload = echo_payload(str(1 << 20))
    assert client_on_socket(sock, 10.0).echo(payload) == payload
    sock.close()
    for host, dev in (("node-a1", "eth0"), ("rt-cluster", "node-a1")):
        stats = in_host(lab.name, host, "tc", "-s", "qdisc", "show", "dev", dev)
        assert re.search(r"qdisc tbf 1ab: root .*rate 20Mbit", stats), stats
        assert int(re.search(r"overlimits (\d+)", stats).group(1)) > 0, stats
    faults.revert(lab)
    loss, rtt = _ping(lab, "elb-a1", node_ip, 10, "0.05")
    assert loss == 0 and rtt < 5
    assert_same(before, snapshot(lab))


def test_link_loss_drops_packets_both_ways(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    faults.apply(lab, "link", "node-b1", ["loss=30%"])
    loss, _ = _ping(lab, "elb-b1", str(lab.plan.ip("node-b1")), 300, "0.005")
    assert 35 <= loss <= 67, loss  # 1 - 0.7 * 0.7 = 51% of echo round trips lost
    assert rule_packets(lab, "node-b1", "raw", r"statistic.*-j DROP") > 0
    assert rule_packets(lab, "node-b1", "mangle", r"statistic.*-j DROP") > 0
    faults.revert(lab)
    assert _ping(lab, "elb-b1", str(lab.plan.ip("node-b1")), 20)[0] == 0
    assert_same(before, snapshot(lab))


def test_link_partition_cuts_a_pod_off(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    pod_ip = str(lab.plan.ip("accounts-0"))
    node = lab.plan.host("accounts-0").node
    faults.apply(lab, "link", "accounts-0", ["partition=on"])
    assert _ping(lab, node, pod_ip, 3)[0] == 100
    assert connect_times(lab, node, (pod_ip, 9090), 1, timeout=1.0) == [None]
    faults.revert(lab)
    assert _ping(lab, node, pod_ip, 3)[0] == 0
    assert_same(before, snapshot(lab))


def test_netem_engine_is_refused_cleanly_where_the_kernel_has_no_netem(make_lab):
    lab = make_lab()
    if netem_available(lab.host("rt-cluster")):
        pytest.skip("this kernel has sch_netem")
    before = snapshot(lab)
    with pytest.raises(EnvironmentProblem, match="no sch_netem; use engine=nfqueue"):
        faults.apply(lab, "cross-az", None, ["delay=10ms", "engine=netem"])
    assert faults.status(lab) == []
    assert_same(before, snapshot(lab))


def test_cross_zone_on_puts_the_elb_health_checks_across_azs(make_lab):
    """Cross-zone on: elb-a1 checks (and sends to) node-b1 and node-c1 too; the checker's connect time for them
    carries the cross-AZ delay (the ELB's backend connect time, what CloudWatch's Latency measures)."""
    lab = make_lab(overrides=["elb.cross_zone=true"], time_scale=0.1)  # a check every second
    faults.apply(lab, "cross-az", None, ["delay=50ms"])
    time.sleep(2.5)
    for node in ("node-b1", "node-c1"):
        row = check_of(lab, "elb-a1", node)
        assert row["status"] == "UP" and row["ms"] >= 45, row
    faults.revert(lab)
    time.sleep(2.5)
    assert check_of(lab, "elb-a1", "node-b1")["ms"] < 20
