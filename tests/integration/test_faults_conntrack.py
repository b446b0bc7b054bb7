"""conntrack-exhaustion and conntrack-invalid: table-full drops and out-of-window resets, seen with conntrack -S,
iptables-save -c, tcpdump and the Thrift connections of the test."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from labservices.client import client_on_socket, echo_payload

from lab import faults
from lab.load import LoadSpec, run_load
from tests.conftest import in_host, ns
from tests.integration.test_faults import (
    assert_same,
    connect_times,
    ct_stat,
    filler_entries,
    rule_packets,
    snapshot,
)

pytestmark = pytest.mark.root


def test_fill_drops_new_connections_through_that_node_only(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    port = lab.topology.service("accounts").node_port
    full, fine = "node-c1", "node-a1"
    drops = ct_stat(lab, full, "drop")
    result = faults.apply(lab, "conntrack-exhaustion", full, ["mode=fill", "free=0"])
    fid = result["fault"]["id"]
    assert filler_entries(lab, full, fid) > 100_000  # real ASSURED entries in that node's own table
    through_full = connect_times(lab, "apollo-1", (str(lab.plan.ip(full)), port), 3, timeout=2.5)
    # A dropped SYN is retransmitted after 1 s: the connect takes >= 1 s, or times out.
    assert all(t is None or t >= 1.0 for t in through_full), through_full
    assert ct_stat(lab, full, "drop") > drops
    through_fine = connect_times(lab, "apollo-1", (str(lab.plan.ip(fine)), port), 5, timeout=2.5)
    assert all(t is not None and t < 1.0 for t in through_fine), through_fine

    faults.revert(lab)
    assert filler_entries(lab, full, fid) == 0
    assert all(t is not None and t < 1.0 for t in connect_times(lab, "apollo-1", (str(lab.plan.ip(full)), port), 3))
    assert_same(before, snapshot(lab))


def test_ceiling_counts_every_entry_including_time_wait(make_lab):
    lab = make_lab()
    node = "node-c1"
    port = lab.topology.service("accounts").node_port
    count = int(in_host(lab.name, node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))
    room = 20
    faults.apply(lab, "conntrack-exhaustion", node, ["mode=ceiling", f"max={count + room}"])
    # Short connections each leave a TIME_WAIT entry (120 s): the emulated table fills the natural way.
    made = 0
    for _ in range(room + 20):
        t = connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), 1, timeout=1.5)[0]
        if t is None or t >= 1.0:
            break
        made += 1
    assert room // 2 <= made <= room + 5, made
    assert ct_stat(lab, node, "drop") > 0
    in_tw = in_host(lab.name, node, "conntrack", "-L", "-p", "tcp", "--state", "TIME_WAIT", check=False)
    assert in_tw.count("TIME_WAIT") >= room // 2
    faults.revert(lab)
    assert connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), 1, timeout=2.5)[0] < 1.0


def _echo_load(lab, address: tuple[str, int], calls: int, size: int = 262144) -> dict[str, int]:
    """Long-lived Thrift connections with large payloads; reconnect after an error. Outcomes counted."""
    payload = echo_payload(str(size))
    counts = {"ok": 0, "reset": 0, "other": 0}
    sock = None
    for _ in range(calls):
        if sock is None:
            sock = lab.host("apollo-1").connect(address)
            client = client_on_socket(sock, 3.0)
        try:
            assert client.echo(payload) == payload
            counts["ok"] += 1
        except ConnectionResetError:
            counts["reset"] += 1
        except Exception:  # closed by the peer after a reset, timeouts
            counts["other"] += 1
        else:
            continue
        sock.close()
        sock = None
    if sock is not None:
        sock.close()
    return counts


class Rsts:
    """tcpdump inside the pods (started before the load, stopped after): the resets on connections that carried a
    request. The ELB's health checks also close with an RST (as HAProxy's do), right after the handshake - the
    reset's sequence number is then the SYN's + 1 - so those, and connections opened before the capture (never
    the load's), are left out."""

    def __init__(self, lab, pods: list[str]):
        self.procs = []
        for pod in pods:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns(lab.name, pod), "tcpdump", "-i", "eth0", "-nn", "-l", "-S",
                 "tcp[tcpflags] & (tcp-syn|tcp-rst) != 0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            while "listening on" not in proc.stderr.readline():
                pass
            self.procs.append(proc)

    def stop(self) -> list[str]:
        lines: list[str] = []
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
            lines += _resets_after_data(out.splitlines())
        return lines


_SEGMENT = re.compile(r" IP (\S+) > (\S+): Flags \[([^\]]*)\], seq (\d+)")


def _resets_after_data(lines: list[str]) -> list[str]:
    """The RST lines of tcpdump -S output whose sender had sent data on that connection (seq past its SYN's + 1)."""
    isn: dict[tuple[str, str], int] = {}
    resets = []
    for line in lines:
        m = _SEGMENT.search(line)
        if m is None:
            continue
        src, dst, flags, seq = m[1], m[2], m[3], int(m[4])
        if "S" in flags:
            isn[(src, dst)] = seq
        elif "R" in flags and (src, dst) in isn and seq != (isn[(src, dst)] + 1) % 2**32:
            resets.append(line)
    return resets


def _invalid_run(lab, via: str = "node-c1", pool: int = 2) -> tuple[dict[str, int], list[str]]:
    """Pooled Thrift connections echoing 256 KiB through a node's NodePort under the fault: (load outcomes,
    RSTs tcpdump saw in the pods). In the default topology node-c1 runs no accounts pod: its connections always
    take a second hop to the pod's node."""
    pods = [p.name for p in lab.topology.pods_of("accounts")]
    faults.apply(lab, "conntrack-invalid", "accounts", ["rate=2%"])
    rsts = Rsts(lab, pods)
    try:
        spec = LoadSpec(service="accounts", rate=15, duration=3, connections="pooled", pool=pool, method="echo",
                        payload=262144, via="node", target=via, timeout=3.0)  # fmt: skip
        result = run_load(lab, spec)
    finally:
        seen = rsts.stop()
    faults.revert(lab)
    return result.to_dict()["outcomes"], seen


INVALID_DROP = r"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"


def test_invalid_segments_reset_connections_with_legacy_kube_proxy(make_lab):
    lab = make_lab(overrides=["kube_proxy.flavour=legacy"])
    before = snapshot(lab)
    invalid = ct_stat(lab, "node-c1", "invalid")
    counts, rsts = _invalid_run(lab)
    assert counts["reset"] > 0, counts  # "connection reset by peer" on long-lived connections, counted by `lab load`
    assert rsts, "tcpdump in the pods saw no RST"
    assert ct_stat(lab, "node-c1", "invalid") > invalid  # conntrack marked them INVALID (not un-NATed)
    assert _echo_load(lab, (str(lab.plan.ip("node-c1")), 30090), 5)["ok"] == 5
    assert_same(before, snapshot(lab))


def test_modern_drop_rule_covers_the_second_hop_but_not_replies_to_the_node_itself(make_lab):
    """Modern kube-proxy drops INVALID packets in FORWARD. Through a node without the pod the bad segment is
    forwarded by the pod's node and dropped there; through the pod's own node the reply is addressed to that node
    (SNAT), arrives on INPUT, and the node's RST still resets the connection. be_liberal=1 fixes both."""
    lab = make_lab(overrides=["services.accounts.replicas=1"])
    pod = lab.topology.pods_of("accounts")[0]
    other = next(n.name for n in lab.topology.k8s_nodes if n.name != pod.node)
    counts, rsts = _invalid_run(lab, via=other)
    assert counts["reset"] == 0 and counts["ok"] == sum(counts.values()), counts
    assert rsts == [], rsts
    assert rule_packets(lab, pod.node, "filter", INVALID_DROP) > 0
    counts, rsts = _invalid_run(lab, via=pod.node, pool=4)
    assert counts["reset"] > 0 and rsts, counts


def test_be_liberal_keeps_out_of_window_segments_valid(make_lab):
    lab = make_lab(overrides=["kube_proxy.conntrack.tcp_be_liberal=true", "services.accounts.replicas=1"])
    pod = lab.topology.pods_of("accounts")[0]
    before = ct_stat(lab, pod.node, "invalid")
    for via in ("node-c1" if pod.node != "node-c1" else "node-b1", pod.node):
        counts, rsts = _invalid_run(lab, via=via)
        assert counts["reset"] == 0 and counts["ok"] == sum(counts.values()), (via, counts)
        assert rsts == [], (via, rsts)
    assert ct_stat(lab, pod.node, "invalid") == before


def test_a_quick_runs_emulated_table_frees_expired_entries_at_the_runs_pace(make_lab):
    """At x0.1 TIME_WAIT lasts 12 s; the kernel's collector may leave expired entries counted for up to 60 s
    more (one machine-wide clock), so the fault's reaper walks the table every 6 s."""
    lab = make_lab(time_scale=0.1)
    node = "node-c1"
    port = lab.topology.service("accounts").node_port
    count = int(in_host(lab.name, node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count"))
    room = 20
    fid = faults.apply(lab, "conntrack-exhaustion", node, ["mode=ceiling", f"max={count + room}"])["fault"]["id"]
    assert len(_reapers_in(lab, node, fid, "--period 6")) == 1  # one, in that node's namespace, at x0.1's pace
    fillers = int(in_host(lab.name, node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count")) - count
    # One quick burst (a slow loop on a busy machine would see its first entries expire): each connection
    # leaves a TIME_WAIT entry (12 s here), filling the emulated table.
    connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), room, timeout=1.5)
    in_use = lambda: int(in_host(lab.name, node, "cat", "/proc/sys/net/netfilter/nf_conntrack_count")) - fillers  # noqa: E731
    assert in_use() >= room - 2
    # 12 s of TIME_WAIT, then at most one reaper period (6 s): free again within 22 s. Without the reaper they
    # stayed counted 43 and 56 s here (the kernel's collector passing on its own 60 s clock).
    deadline = time.monotonic() + 22
    while in_use() > 5 and time.monotonic() < deadline:
        time.sleep(1)
    assert in_use() <= 5, in_host(lab.name, node, "conntrack", "-L", "-p", "tcp", "--mark", "0", check=False)
    assert connect_times(lab, "apollo-1", (str(lab.plan.ip(node)), port), 1, timeout=2.5)[0] < 1.0
    faults.revert(lab)
    assert _reapers_in(lab, node, fid) == set()


def _reapers_in(lab, node: str, fid: int, args: str = "") -> set[str]:
    """Reaper processes of fault `fid` running in that node's namespace (other labs may run reapers too)."""
    found = subprocess.run(["pgrep", "-f", f"lab.faults.reaper --fault {fid} {args}"], capture_output=True, text=True)
    there = subprocess.run(["ip", "netns", "pids", ns(lab.name, node)], capture_output=True, text=True)
    return set(found.stdout.split()) & set(there.stdout.split())
