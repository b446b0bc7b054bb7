"""`lab trace` on real labs: what it reports is checked against conntrack -L, the ELB's log and iptables-save -c,
read with independent tools inside the lab's namespaces; health checks around it must not confuse it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.teach.trace import trace
from tests.conftest import REPO, in_host

pytestmark = pytest.mark.root

CT_LINE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) .*?src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def conntrack_entry(lab, node: str, orig_sport: int, orig_dport: int) -> tuple[tuple, tuple]:
    """(original, reply) tuples of one entry, read with `conntrack -L` (not with the code under test)."""
    out = in_host(lab.name, node, "conntrack", "-L", "-p", "tcp", "--orig-port-src", str(orig_sport),
                  "--orig-port-dst", str(orig_dport))  # fmt: skip
    lines = [ln for ln in out.splitlines() if ln.startswith("tcp")]
    assert len(lines) == 1, out
    m = CT_LINE.search(lines[0])
    assert m, lines[0]
    g = m.groups()
    return (g[0], g[1], int(g[2]), int(g[3])), (g[4], g[5], int(g[6]), int(g[7]))


def assert_nothing_left(lab) -> None:
    for node in lab.topology.k8s_nodes:
        tables = in_host(lab.name, node.name, "nft", "list", "tables")
        assert "lab_trace_" not in tables, f"{node.name} kept a trace table: {tables}"
        pids = subprocess.run(["ip", "netns", "pids", f"lab.{lab.name}.{node.name}"], capture_output=True, text=True)
        assert pids.stdout.strip() == "", f"processes left in {node.name}: {pids.stdout}"


def check_against_conntrack(lab, result) -> None:
    """The trace's DNAT and SNAT are what the node's conntrack entry says."""
    s = result.summary
    node_hop = next(h for h in result.hops if h.kind == "node")
    orig = node_hop.evidence["conntrack"]["original"]
    sport, dport = int(orig.split(" -> ")[0].rsplit(":", 1)[1]), int(orig.rsplit(":", 1)[1])
    original, reply = conntrack_entry(lab, s["instance"], sport, dport)
    assert f"{reply[0]}:{reply[2]}" == s["dnat_to"]
    assert s["snat"] == ((reply[1], reply[3]) != (original[0], original[2]))
    if s["snat"]:
        assert f"{reply[1]}:{reply[3]}" == s["snat_to"]


@pytest.mark.parametrize("topology", ["default.yaml", "seed-2017.yaml"])
def test_trace_of_each_service_names_elb_node_instance_chains_pod_and_snat(make_lab, topology):
    lab = make_lab(topology)
    topo = lab.topology
    legacy = topo.kube_proxy.flavour == "legacy"
    for listener in topo.elb.listeners:
        svc = topo.service(listener.service)
        elb = topo.elb_nodes[0]
        result = trace(lab, svc.name, "elb", target=elb.name)
        s = result.summary
        assert result.ok, result.error
        assert s["elb_node"] == elb.name and s["instance"] in {n.name for n in topo.elb_targets(elb)}
        chains = s["chains"]
        assert "KUBE-NODEPORTS" in chains
        assert any(c.startswith("KUBE-SVC-") for c in chains) and any(c.startswith("KUBE-SEP-") for c in chains)
        assert any(c.startswith("KUBE-EXT-") for c in chains) != legacy  # modern only
        pod = next(p for p in topo.pods_of(svc.name) if p.name == s["pod"])
        assert s["dnat_to"] == f"{lab.plan.ip(pod.name)}:{svc.port}" and s["pod_node"] == pod.node
        assert s["snat"] is True  # Cluster policy: every NodePort connection is masqueraded
        check_against_conntrack(lab, result)
        # the ELB's own log names the same instance, for the client port the trace used
        log = lab.state.path("logs", f"{elb.name}.haproxy.log").read_text()
        line = next(ln for ln in log.splitlines() if ln.startswith(s["client"] + " "))
        assert f" {svc.name}/{s['instance']} " in line and f"listener-{listener.port}" in line
        # the pod reports the address it saw: the SNAT address of the conntrack entry
        who = next(h for h in result.hops if h.kind == "pod").evidence["whoami"]
        assert f"{who['client_ip']}:{who['client_port']}" == s["snat_to"]
    assert_nothing_left(lab)


def test_trace_counts_match_iptables_counters_and_survive_health_checks(make_lab):
    # Health checks every 0.1 s on the first listener's NodePort, which is the port we trace.
    lab = make_lab(time_scale=0.01)
    before = in_host(lab.name, "node-a1", "iptables-save", "-c", "-t", "nat")
    result = trace(lab, "accounts", "node", target="node-a1")
    after = in_host(lab.name, "node-a1", "iptables-save", "-c", "-t", "nat")
    assert result.ok, result.error
    assert result.summary["other_syns_left_out"] > 0, "no health check was traced alongside: the test proves nothing"
    check_against_conntrack(lab, result)
    # the KUBE-SEP chain the trace names has counted at least our SYN (health checks may add more)
    sep = next(c for c in result.summary["chains"] if c.startswith("KUBE-SEP-"))

    def dnat_packets(text: str) -> int:
        line = next(ln for ln in text.splitlines() if f"-A {sep} " in ln and "DNAT" in ln)
        return int(line[1:].split(":", 1)[0])

    assert dnat_packets(after) - dnat_packets(before) >= 1
    node_hop = next(h for h in result.hops if h.kind == "node")
    deltas = [r["counter_delta"] for r in node_hop.rules if r["chain"] == sep]
    assert deltas and all(d is not None and d >= 1 for d in deltas)


@pytest.mark.parametrize("flavour", ["modern", "legacy"])
def test_trace_with_local_policy_shows_no_snat_and_the_drop_on_a_node_without_a_pod(make_lab, flavour):
    lab = make_lab(overrides=["services.accounts.external_traffic_policy=Local", f"kube_proxy.flavour={flavour}"])
    topo = lab.topology
    with_pod = sorted({p.node for p in topo.pods_of("accounts")})
    without = next(n.name for n in topo.k8s_nodes if n.name not in with_pod)

    result = trace(lab, "accounts", "node", target=with_pod[0])
    assert result.ok, result.error
    s = result.summary
    assert s["snat"] is False and s["snat_to"] is None and s["pod_node"] == with_pod[0]
    check_against_conntrack(lab, result)
    who = next(h for h in result.hops if h.kind == "pod").evidence["whoami"]
    assert who["client_ip"] == str(lab.plan.ip("apollo-1"))  # the pod sees the real client

    # through the ELB: the pod sees the ELB node's own address, the source the ELB's connection had
    elb = next(e.name for e in topo.elb_nodes if topo.node(with_pod[0]).az == e.az)
    via_elb = trace(lab, "accounts", "elb", target=elb)
    assert via_elb.ok and via_elb.summary["snat"] is False and via_elb.summary["instance"] == with_pod[0]
    check_against_conntrack(lab, via_elb)
    who = next(h for h in via_elb.hops if h.kind == "pod").evidence["whoami"]
    assert who["client_ip"] == str(lab.plan.ip(elb))

    failed = trace(lab, "accounts", "node", target=without, timeout=1.0)
    assert not failed.ok and "timed out" in (failed.error or "")
    node_hop = next(h for h in failed.hops if h.kind == "node")
    assert node_hop.problem and node_hop.rules[-1]["verdict"] == "DROP"
    dropper = "KUBE-FIREWALL" if flavour == "legacy" else "KUBE-EXTERNAL-SERVICES"
    assert node_hop.rules[-1]["chain"] == dropper
    assert_nothing_left(lab)


def test_trace_cli_json_mermaid_and_diagram(make_lab, tmp_path):
    lab = make_lab()
    svg = tmp_path / "trace.svg"
    cmd = [sys.executable, "-m", "lab.cli", "trace", "catalog", "--via", "node", "--target", "node-c1",
           "-n", lab.name, "--json", "--diagram", str(svg)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] and data["summary"]["instance"] == "node-c1"
    assert data["mermaid"].startswith("flowchart LR") and "AZ us-east-1c" in data["mermaid"]
    assert [h["kind"] for h in data["hops"]][:2] == ["client", "node"]
    text = svg.read_text()
    assert "<svg" in text and "us-east-1c" in text


def test_a_trace_table_left_by_a_killed_trace_is_removed_by_the_next_trace(make_lab):
    lab = make_lab()
    dead = next(pid for pid in range(4_000_000, 4_194_304) if not Path(f"/proc/{pid}").exists())  # no such process
    stale = f"lab_trace_{dead}_abcdef"
    in_host(lab.name, "node-a1", "nft", "add", "table", "ip", stale)
    assert stale in in_host(lab.name, "node-a1", "nft", "list", "tables")
    result = trace(lab, "catalog", "node", target="node-a1")
    assert result.ok, result.error
    assert_nothing_left(lab)


def test_a_refused_connection_through_the_elb_shows_each_retry_and_who_refused(make_lab):
    lab = make_lab(time_scale=0.1)
    for pod in lab.topology.pods_of("catalog"):
        lab.backend.control_pod(lab, pod.name, "stop")
    pods = [p.name for p in lab.topology.pods_of("catalog")]

    def resets_sent() -> int:  # the pods' own kernels count the RSTs they send (nstat, not the code under test)
        return sum(int(in_host(lab.name, pod, "nstat", "-asz", "TcpOutRsts").split()[-2]) for pod in pods)

    before = resets_sent()
    result = trace(lab, "catalog", "elb", target="elb-a1", timeout=5.0)
    assert not result.ok
    log = next(h for h in result.hops if h.kind == "elb").evidence["log"]
    assert log["termination"] == "SC" and log["retries"] >= 1, log
    node_hop = next(h for h in result.hops if h.kind == "node")
    attempts = [line for line in node_hop.says if line.startswith("attempt ")]
    assert len(attempts) == log["retries"] + 1, node_hop.says  # catalog's NodePort is not the health check's
    assert all("answered with a RST" in line for line in attempts), attempts
    assert resets_sent() - before == len(attempts)
    assert_nothing_left(lab)


def test_trace_bad_input_is_one_line_before_any_traffic(make_lab):
    lab = make_lab()
    cases = [
        (["trace", "nope"], "Error: unknown service 'nope'; services: accounts, catalog"),
        (["trace", "accounts", "--via", "pod"], "Error: --via 'pod': choose one of elb, node"),
        (["trace", "accounts", "--diagram", "x.pdf"], "Error: --diagram x.pdf: the file name must end in .svg or .png"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "lab.cli", *args, "-n", lab.name], capture_output=True,
                              text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.strip().startswith(message) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "lab_trace_" not in in_host(lab.name, "node-a1", "nft", "list", "tables")
