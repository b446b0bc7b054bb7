"""The default lab's path, checked with independent tools: ip, iptables-save -c, conntrack, ss."""

from __future__ import annotations

import re
import time

import pytest

from lab import rpc
from lab.render.kubeproxy import chain_name, service_port_name
from tests.conftest import in_host, ip_json, lab_namespaces

pytestmark = pytest.mark.root


def whoami(lab, service, via, target):
    return rpc.call(lab, service, "whoami", [], rpc.resolve(lab, service, via, target))["result"]


def test_up_creates_the_planned_hosts_addresses_and_routes(make_lab):
    lab = make_lab()
    names = set(lab_namespaces(lab.name))
    assert names == {f"lab.{lab.name}.{h.name}" for h in lab.plan.hosts}
    for host in lab.plan.hosts:
        if host.ip is None:
            continue
        addrs = ip_json(lab.name, host.name, "addr", "show", "dev", "eth0")
        assert str(host.ip) in [a["local"] for a in addrs[0]["addr_info"]]
    routes = ip_json(lab.name, "rt-cluster", "route")
    # kubenet on AWS: each node's pod CIDR is a VPC route via that node
    for node, cidr in lab.plan.pod_cidrs.items():
        assert {"dst": str(cidr), "gateway": str(lab.plan.ip(node))}.items() <= next(
            r for r in routes if r["dst"] == str(cidr)
        ).items()
    # the host side of every veth lives in a lab namespace, never in this machine's own namespace
    assert in_host(lab.name, "rt-cluster", "ip", "-br", "link").count("@") >= len(lab.topology.k8s_nodes)


def test_every_listener_works_through_every_elb_node(make_lab):
    lab = make_lab()
    for listener in lab.topology.elb.listeners:
        for elb in lab.topology.elb_nodes:
            who = whoami(lab, listener.service, "elb", elb.name)
            assert who["service"] == listener.service
            # cross-zone off: the ELB node sent to its own AZ's instance, which SNATs (Cluster policy)
            instance = next(n for n in lab.topology.k8s_nodes if n.az == elb.az)
            if who["node"] != instance.name:
                assert who["client_ip"] == str(lab.plan.ip(instance.name))


def test_cluster_policy_forwards_to_a_pod_on_another_node_with_snat(make_lab):
    lab = make_lab()
    topo = lab.topology
    svc = topo.services[0]
    pod_nodes = {p.node for p in topo.pods_of(svc.name)}
    empty = next(n.name for n in topo.k8s_nodes if n.name not in pod_nodes)
    who = whoami(lab, svc.name, "node", empty)
    assert who["node"] != empty
    assert who["client_ip"] == str(lab.plan.ip(empty)), "the pod must see the forwarding node's IP (SNAT)"
    # conntrack on the forwarding node: original to the NodePort, reply from the pod (DNAT), to the node (SNAT)
    entries = in_host(lab.name, empty, "conntrack", "-L", "-p", "tcp", "--orig-port-dst", str(svc.node_port))
    line = next(ln for ln in entries.splitlines() if f"src={who['pod_ip']}" in ln)
    reply = line.split(f"src={who['pod_ip']}", 1)[1]
    assert f"dst={lab.plan.ip(empty)}" in reply


def test_counters_of_the_serving_endpoint_chain_rise(make_lab):
    lab = make_lab()
    svc = lab.topology.services[1]
    node = lab.topology.k8s_nodes[0].name
    who = whoami(lab, svc.name, "node", node)
    sep = chain_name("KUBE-SEP-", service_port_name(svc), "tcp", f"{who['pod_ip']}:{svc.port}")
    saved = in_host(lab.name, node, "iptables-save", "-c", "-t", "nat")
    dnat = next(ln for ln in saved.splitlines() if ln.split(" ", 1)[-1].startswith(f"-A {sep} ") and "DNAT" in ln)
    packets = int(re.match(r"\[(\d+):\d+\]", dnat).group(1))
    assert packets >= 1


def test_elb_nodes_check_only_their_az_when_cross_zone_is_off(make_lab):
    lab = make_lab()
    from lab.lifecycle import elb_view

    for entry in elb_view(lab):
        assert set(entry["instances"]) == {n.name for n in lab.topology.k8s_nodes if n.az == entry["az"]}
        assert all(v["state"] == "InService" for v in entry["instances"].values())


def test_cross_zone_on_makes_every_elb_node_check_every_instance(make_lab):
    lab = make_lab(overrides=["elb.cross_zone=true"], time_scale=0.1)  # checks every 1 s
    from lab.lifecycle import elb_view

    for entry in elb_view(lab):
        assert set(entry["instances"]) == {n.name for n in lab.topology.k8s_nodes}
    # the checks really arrive: node-c1's conntrack holds connections from elb-a1 to the health check port
    port = str(lab.topology.health_check_port)
    elb_ip = str(lab.plan.ip("elb-a1"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        listed = in_host(
            lab.name, "node-c1", "conntrack", "-L", "-p", "tcp", "-s", elb_ip, "--dport", port, check=False
        )
        if elb_ip in listed:
            break
        time.sleep(0.2)
    assert elb_ip in listed


def test_pods_listen_with_the_configured_backlog(make_lab):
    lab = make_lab(overrides=["services.accounts.backlog=7"])
    out = in_host(lab.name, "accounts-0", "ss", "-ltn", "sport", "= :9090")
    assert re.search(r"LISTEN\s+0\s+7\s", out), out
