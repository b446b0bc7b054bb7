"""externalTrafficPolicy Local: nodes without a local pod drop NodePort traffic; the ELB takes them out."""

from __future__ import annotations

import time

import pytest

from lab import rpc
from lab.errors import LabError
from lab.lifecycle import elb_view
from tests.conftest import in_host

pytestmark = pytest.mark.root


@pytest.mark.parametrize("flavour", ["modern", "legacy"])
def test_local_policy_nodes_without_pods_go_out_of_service(make_lab, flavour):
    # accounts is the first listener, so the ELB's single health check runs against its NodePort.
    lab = make_lab(
        overrides=["services.accounts.external_traffic_policy=Local", f"kube_proxy.flavour={flavour}"],
        time_scale=0.05,  # checks every 0.5 s, unhealthy after 6 failures
    )
    topo = lab.topology
    with_pod = {p.node for p in topo.pods_of("accounts")}
    without = [n.name for n in topo.k8s_nodes if n.name not in with_pod]
    assert without, "the default topology leaves one node without an accounts pod"

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        states = {name: v["state"] for e in elb_view(lab) for name, v in e["instances"].items()}
        if all(states[n] == "OutOfService" for n in without):
            break
        time.sleep(0.25)
    assert all(states[n] == "OutOfService" for n in without), states
    assert all(states[n] == "InService" for n in with_pod), states

    # The node without a pod drops the SYN: the connect times out (no RST), as the ELB saw it.
    target = rpc.resolve(lab, "accounts", "node", without[0])
    with pytest.raises(LabError, match="timed out"):
        rpc.call(lab, "accounts", "ping", [], target, timeout=1.0)

    # A node with a pod keeps the client's source address: no SNAT under Local.
    node = sorted(with_pod)[0]
    who = rpc.call(lab, "accounts", "whoami", [], rpc.resolve(lab, "accounts", "node", node))["result"]
    assert who["node"] == node
    assert who["client_ip"] == str(lab.plan.ip("apollo-1"))
    client = str(lab.plan.ip("apollo-1"))
    conntrack = in_host(
        lab.name,
        node,
        "conntrack",
        "-L",
        "-p",
        "tcp",
        "-s",
        client,
        "--orig-port-dst",
        str(topo.service("accounts").node_port),
    )
    line = next(ln for ln in conntrack.splitlines() if f"src={who['pod_ip']}" in ln)
    assert f"dst={client}" in line.split(f"src={who['pod_ip']}", 1)[1], "reply must go to the client, unSNATed"
