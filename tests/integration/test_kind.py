"""`lab up --backend kind` on a real kind cluster: the same topology, RPCs, hosts and faults as on namespaces.

Runs where docker, kind and kubectl are installed, a Docker engine answers and it has (or can pull) the
kind node image; skipped with the reason otherwise (on the lab's own build machine no image can be pulled,
so these run in .github/workflows/kind.yml). Each test module brings up its own uniquely named lab and
always removes it, checking that no container, network or cluster of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from lab import faults, lifecycle, rpc
from lab.backends.kind import docker_reachable
from lab.lab import Lab
from lab.render import kind
from tests.conftest import TOPOLOGIES, unique_lab_name

pytestmark = [pytest.mark.root, pytest.mark.slow]
PULL_TIMEOUT = 300


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the kind tier runs in .github/workflows/kind.yml)"
    why = docker_reachable()
    if why:
        return f"no Docker engine answers: {why}"
    for image in {i.image for i in kind.NODE_IMAGES.values()} | {kind.HAPROXY_IMAGE}:
        have = subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
        if not have:
            pull = subprocess.run(["docker", "pull", image], capture_output=True, text=True, timeout=PULL_TIMEOUT)
            if pull.returncode != 0:
                return f"the Docker engine cannot pull {image}: {pull.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def requirements() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


def leftovers(name: str) -> list[str]:
    names = kind.KindNames(name)
    found = subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={kind.LABEL_LAB}={name}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    found += subprocess.run(
        ["docker", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=io.x-k8s.kind.cluster={names.cluster}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if subprocess.run(["docker", "network", "inspect", names.network], capture_output=True).returncode == 0:
        found.append(f"network {names.network}")
    return found


@contextlib.contextmanager
def bring_up(topology: str, overrides: list[str] | None = None) -> Iterator[Lab]:
    name = unique_lab_name("k")
    lab = lifecycle.prepare(TOPOLOGIES / topology, name, overrides or [], "kind", time_scale=0.2)
    try:
        lifecycle.up(lab)
        yield Lab.load(name)
    finally:
        lifecycle.down(name)
        assert leftovers(name) == [], f"lab {name} left these behind"


@pytest.fixture(scope="module")
def kind_lab(requirements) -> Iterator[Lab]:
    with bring_up("default.yaml") as lab:
        yield lab


def nsenter(netns: str, *cmd: str) -> str:
    proc = subprocess.run(["nsenter", f"--net={netns}", "--", *cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return proc.stdout


def wait_in_service(lab: Lab, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        view = lifecycle.elb_view(lab)
        states = [i["state"] for e in view for i in e["instances"].values()]
        if states and all(s == "InService" for s in states):
            return view
        assert time.monotonic() < deadline, f"ELB nodes never saw every instance InService: {view}"
        time.sleep(1)


def test_every_process_runs_and_every_elb_node_sees_its_instances_in_service(kind_lab):
    status = lifecycle.status(kind_lab.name)
    assert status["backend"] == "kind"
    procs = {p["name"]: p for p in status["processes"]}
    assert set(procs) == {f"{kind}/{e.name}" for e in kind_lab.topology.elb_nodes for kind in ("elb", "check")} | {
        f"pod/{p.name}" for p in kind_lab.topology.pods
    }
    assert all(p["state"] == "running" and p["ready"] for p in procs.values()), procs
    view = wait_in_service(kind_lab)
    for entry in view:  # cross-zone off: each ELB node knows only its own AZ's instance
        az = next(e.az for e in kind_lab.topology.elb_nodes if e.name == entry["elb_node"])
        assert set(entry["instances"]) == {n.name for n in kind_lab.topology.k8s_nodes if n.az == az}


def test_whoami_through_every_listener_and_elb_node_reaches_a_real_pod(kind_lab):
    wait_in_service(kind_lab)
    topo = kind_lab.topology
    for listener in topo.elb.listeners:
        for elb in topo.elb_nodes:
            result = rpc.call(
                kind_lab, listener.service, "whoami", [], rpc.resolve(kind_lab, listener.service, "elb", elb.name)
            )
            who = result["result"]
            assert who["pod"] in {p.name for p in topo.pods_of(listener.service)}
            assert who["node"] in {n.name for n in topo.k8s_nodes}


def test_nodes_answer_on_their_plan_address_and_run_kube_proxys_chains(kind_lab):
    topo = kind_lab.topology
    for node in topo.k8s_nodes:
        host = kind_lab.host(node.name)
        addrs = json.loads(nsenter(host.netns, "ip", "-json", "-4", "addr", "show", "dev", "eth0"))[0]["addr_info"]
        assert (host.ip, 32) in {(a["local"], a["prefixlen"]) for a in addrs}
        saved = nsenter(host.netns, "iptables-save", "-t", "nat")
        if "KUBE-NODEPORTS" not in saved and shutil.which("iptables-legacy-save"):
            saved = nsenter(host.netns, "iptables-legacy-save", "-t", "nat")  # the node image chose legacy
        assert "KUBE-NODEPORTS" in saved
        for svc in topo.services:
            assert f"--dport {svc.node_port}" in saved
        result = rpc.call(kind_lab, svc.name, "ping", [], rpc.resolve(kind_lab, svc.name, "node", node.name))
        assert result["connect_ms"] >= 0


def test_pod_hosts_are_the_pods_own_namespaces(kind_lab):
    pods = kind_lab.hosts_by_role("pod")
    assert {p.name for p in pods} == {p.name for p in kind_lab.topology.pods}
    node_inodes = {os.stat(kind_lab.host(n.name).netns).st_ino for n in kind_lab.topology.k8s_nodes}
    for pod in pods:
        assert os.stat(pod.netns).st_ino not in node_inodes
        assert f"{pod.ip}/" in nsenter(pod.netns, "ip", "-4", "-o", "addr")
        assert ":9090" in nsenter(pod.netns, "ss", "-ltn")


def test_a_conntrack_fault_on_a_kind_node_blocks_new_connections_until_reverted(kind_lab):
    topo = kind_lab.topology
    node = topo.k8s_nodes[0].name
    svc = topo.services[0].name
    target = rpc.resolve(kind_lab, svc, "node", node)
    fault = faults.apply(kind_lab, "conntrack-exhaustion", target=node, params=["free=0"])["fault"]
    try:
        with pytest.raises(Exception, match="connect"):
            rpc.call(kind_lab, svc, "ping", [], target, timeout=2)
    finally:
        faults.revert(kind_lab, [fault["id"]])
    assert rpc.call(kind_lab, svc, "ping", [], target)["method"] == "ping"


def test_a_stopped_pod_leaves_the_service_to_the_others(kind_lab):
    pod = kind_lab.topology.pods_of("accounts")[0].name
    kind_lab.backend.control_pod(kind_lab, pod, "stop")
    try:
        procs = {p["name"]: p for p in kind_lab.backend.processes(kind_lab)}
        assert procs[f"pod/{pod}"]["wanted"] is False and not procs[f"pod/{pod}"]["ready"]
        for _ in range(4):
            tgt = rpc.resolve(kind_lab, "accounts", "node", kind_lab.topology.k8s_nodes[0].name)
            assert rpc.call(kind_lab, "accounts", "whoami", [], tgt)["result"]["pod"] != pod
    finally:
        kind_lab.backend.control_pod(kind_lab, pod, "start")
    procs = {p["name"]: p for p in kind_lab.backend.processes(kind_lab)}
    assert procs[f"pod/{pod}"]["ready"]


def test_the_seed_topology_runs_on_the_oldest_node_image(requirements):
    with bring_up("seed-2017.yaml") as lab:
        kubeconfig = str(lab.state.path("kubeconfig"))
        nodes = json.loads(
            subprocess.run(
                ["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o", "json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout  # fmt: skip
        )["items"]
        versions = {n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes}
        assert versions == {f"v{kind.NODE_IMAGES['legacy'].kubernetes}"}
        zones = sorted(n["metadata"]["labels"].get(kind.ZONE_LABEL, "") for n in nodes)
        assert zones[1:] == sorted(n.az for n in lab.topology.k8s_nodes)  # the control plane has none
        wait_in_service(lab)
        tgt = rpc.resolve(lab, "orders", "elb", lab.topology.elb_nodes[0].name)
        assert rpc.call(lab, "orders", "whoami", [], tgt)["result"]["pod"].startswith("orders-")
