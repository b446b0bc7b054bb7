"""Health-check misroutes, stale endpoints, SYN backlog overflow and the ELB idle timeout, observed through the
ELB (its health checker's and HAProxy's stats sockets), iptables-save, ss and nstat."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from labservices.client import client_on_socket

from lab import faults
from lab.haproxy_stats import instance_health, show_stat
from lab.load import LoadSpec, run_load
from lab.runtime.elbcheck import read_status
from tests.conftest import in_host, ns
from tests.integration.test_faults import (
    assert_same,
    connect_times,
    nstat,
    rpc_outcomes,
    rule_packets,
    snapshot,
)

pytestmark = pytest.mark.root

QUICK = 0.1  # ELB timers x0.1: a health check every second


def check_of(lab, elb: str, node: str) -> dict:
    """The ELB node's health checker's view of an instance (its status socket): state, status, last result,
    its duration (ms), the port it checks, and how many checks it made."""
    return read_status(str(lab.backend.elb_checker_socket(lab, elb)))[node]


def stays_in_service(lab, elb: str, node: str, seconds: float = 3.5) -> bool:
    """In service with passing checks, and checks kept running (at 1/s) through the whole wait; HAProxy agrees."""
    first = check_of(lab, elb, node)
    time.sleep(seconds)
    row = check_of(lab, elb, node)
    ok = row["state"] == "InService" and row["status"] == "UP" and row["last"] == "ok"
    ok = ok and row["checks"] >= first["checks"] + int(seconds) - 1
    assert ok, f"{elb} -> {node} (before, after): {first}, {row}"
    assert instance_health(show_stat(lab.backend.elb_stats_socket(lab, elb)))[node]["state"] == "InService"
    return ok


def test_first_listener_check_stays_green_while_another_listener_fails(make_lab):
    lab = make_lab(time_scale=QUICK)
    before = snapshot(lab)
    # cross-zone off: elb-a1 sends only to node-a1; the check covers accounts' NodePort (the first listener)
    faults.apply(lab, "healthcheck-misroute", "node-a1", ["variant=first-listener"])
    # `lab load` through the broken listener: every request fails, counted by the load generator
    broken = run_load(lab, LoadSpec(service="catalog", rate=10, duration=2, connections="per-request", target="elb-a1"))
    assert broken.requests >= 15 and broken.total.outcomes.get("ok", 0) == 0, broken.to_dict()["outcomes"]
    fine = run_load(lab, LoadSpec(service="accounts", rate=10, duration=1, connections="per-request", target="elb-a1"))
    assert fine.ok_ratio == 1.0, fine.to_dict()["outcomes"]
    assert rpc_outcomes(lab, "catalog", "elb", "elb-b1", 5) == {"ok": 5}
    assert stays_in_service(lab, "elb-a1", "node-a1")
    assert rule_packets(lab, "node-a1", "filter", r"REJECT --reject-with tcp-reset") > 0
    faults.revert(lab)
    assert rpc_outcomes(lab, "catalog", "elb", "elb-a1", 5) == {"ok": 5}
    assert_same(before, snapshot(lab))


def test_local_policy_nodes_without_pods_drop_while_checks_pass(make_lab):
    lab = make_lab(time_scale=QUICK)
    before = snapshot(lab)
    with_pods = {p.node for p in lab.topology.pods_of("catalog")}
    empty = next(n for n in lab.topology.k8s_nodes if n.name not in with_pods)
    elb = next(e.name for e in lab.topology.elb_nodes if e.az == empty.az)
    faults.apply(lab, "healthcheck-misroute", None, ["variant=local-no-endpoints"])
    saved = in_host(lab.name, empty.name, "iptables-save", "-t", "filter")
    assert "default/catalog:thrift has no local endpoints" in saved
    broken = rpc_outcomes(lab, "catalog", "elb", elb, 3, timeout=1.5)
    assert broken.get("ok", 0) == 0, broken
    assert stays_in_service(lab, elb, empty.name)
    faults.revert(lab)
    assert rpc_outcomes(lab, "catalog", "elb", elb, 3) == {"ok": 3}
    assert_same(before, snapshot(lab))


def test_wrong_port_check_passes_on_a_port_that_always_answers(make_lab):
    lab = make_lab(time_scale=QUICK)
    before = snapshot(lab)
    faults.apply(lab, "healthcheck-misroute", "node-a1", ["variant=wrong-port", "port=10256"])
    assert check_of(lab, "elb-a1", "node-a1")["port"] == 10256  # the checker now checks the responder's port
    for node in lab.topology.k8s_nodes:
        assert ":10256" in in_host(lab.name, node.name, "ss", "-ltn")
    broken = rpc_outcomes(lab, "accounts", "elb", "elb-a1", 5)
    assert broken.get("ok", 0) == 0, broken
    assert stays_in_service(lab, "elb-a1", "node-a1")
    assert stays_in_service(lab, "elb-b1", "node-b1", seconds=0.5)
    faults.revert(lab)
    assert check_of(lab, "elb-a1", "node-a1")["port"] == lab.topology.health_check_port
    assert rpc_outcomes(lab, "accounts", "elb", "elb-a1", 5) == {"ok": 5}
    assert_same(before, snapshot(lab))


def test_stale_endpoints_keep_sending_to_a_dead_pod_until_kube_proxy_notices(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    dead = "accounts-0"
    dead_ip = str(lab.plan.ip(dead))
    stale, fresh = "node-c1", "node-b1"
    faults.apply(lab, "stale-endpoints", dead, [f"fresh={fresh}"])
    assert f"--to-destination {dead_ip}:9090" in in_host(lab.name, stale, "iptables-save", "-t", "nat")
    assert f"--to-destination {dead_ip}:9090" not in in_host(lab.name, fresh, "iptables-save", "-t", "nat")
    via_stale = rpc_outcomes(lab, "accounts", "node", stale, 20)
    assert via_stale.get("Connection refused", 0) > 0, via_stale  # about half go to the dead pod
    assert rpc_outcomes(lab, "accounts", "node", fresh, 20) == {"ok": 20}
    faults.revert(lab)
    assert rpc_outcomes(lab, "accounts", "node", stale, 10) == {"ok": 10}
    assert_same(before, snapshot(lab))


def test_stale_endpoint_blackhole_times_out(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    faults.apply(lab, "stale-endpoints", "accounts-0", ["mode=blackhole"])
    node = lab.plan.host("accounts-0").node
    assert connect_times(lab, node, (str(lab.plan.ip("accounts-0")), 9090), 1, timeout=1.5) == [None]
    faults.revert(lab)
    assert connect_error(lab, node, (str(lab.plan.ip("accounts-0")), 9090)) is None
    assert_same(before, snapshot(lab))


def connect_error(lab, source: str, address: tuple[str, int]) -> str | None:
    """None once a connect succeeds (3 tries within ~6 s on a loaded machine), else what the last one raised."""

    def attempt() -> str | None:
        err = None
        for _ in range(3):
            try:
                socket.create_connection(address, timeout=2.0).close()
                return None
            except OSError as exc:
                err = f"{type(exc).__name__}: {exc}"
        return err

    return lab.host(source).in_netns(attempt)


def _burst(lab, source: str, address: tuple[str, int], n: int) -> list[float | None]:
    def run() -> list[float | None]:
        times: list[float | None] = []
        socks: list[socket.socket] = []
        lock = threading.Lock()

        def one() -> None:
            t0 = time.perf_counter()
            try:
                s = socket.create_connection(address, timeout=5)
            except OSError:
                with lock:
                    times.append(None)
                return
            with lock:
                times.append(time.perf_counter() - t0)
                socks.append(s)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in socks:
            s.close()
        return times

    return lab.host(source).in_netns(run)


def test_syn_backlog_overflows_under_a_burst(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    pod = "accounts-0"
    node = lab.plan.host(pod).node
    address = (str(lab.plan.ip(pod)), 9090)
    overflows = nstat(lab, pod, "TcpExtListenOverflows")
    faults.apply(lab, "syn-backlog", pod, ["backlog=1", "accept_delay=200ms"])
    assert "LISTEN 0      1 " in in_host(lab.name, pod, "ss", "-ltn", "sport", "= :9090")
    times = _burst(lab, node, address, 30)
    assert nstat(lab, pod, "TcpExtListenOverflows") > overflows
    assert sum(1 for t in times if t is None or t >= 1.0) > 0, times  # a dropped SYN / ACK costs a 1 s retransmit
    faults.revert(lab)
    assert "LISTEN 0      128 " in in_host(lab.name, pod, "ss", "-ltn", "sport", "= :9090")
    after = nstat(lab, pod, "TcpExtListenOverflows")
    assert all(t is not None and t < 1.0 for t in _burst(lab, node, address, 30))
    assert nstat(lab, pod, "TcpExtListenOverflows") == after
    assert_same(before, snapshot(lab))


def test_elb_idle_timeout_closes_pooled_connections(make_lab):
    lab = make_lab()
    before = snapshot(lab)
    config = lab.state.path("run", "elb-a1.haproxy.cfg").read_text()
    elb = (str(lab.plan.ip("elb-a1")), 9090)

    def pooled_call_after(idle: float) -> tuple[str, str]:
        sock = lab.host("apollo-1").connect(elb)
        client = client_on_socket(sock, 3.0)
        client.ping()
        time.sleep(idle)
        waiting = in_host(lab.name, "apollo-1", "ss", "-tn", "state", "close-wait")
        try:
            client.ping()
            outcome = "ok"
        except Exception as exc:
            outcome = type(exc).__name__
        finally:
            sock.close()
        return outcome, waiting

    faults.apply(lab, "elb-idle-timeout", "elb-a1", ["timeout=1s"])
    assert "timeout client 1000ms" in lab.state.path("run", "elb-a1.haproxy.cfg").read_text()
    outcome, waiting = pooled_call_after(2.0)
    assert f"{elb[0]}:9090" in waiting  # the ELB closed it; the client's pool still holds it (CLOSE-WAIT)
    assert outcome != "ok"
    faults.revert(lab)
    assert lab.state.path("run", "elb-a1.haproxy.cfg").read_text() == config
    outcome, waiting = pooled_call_after(2.0)
    assert outcome == "ok" and f"{elb[0]}:9090" not in waiting
    assert_same(before, snapshot(lab))


def haproxy_pids(lab_name: str, elb: str) -> set[str]:
    """HAProxy's processes in that ELB node's namespace (`ip netns pids`, then each one's name)."""
    pids = subprocess.run(["ip", "netns", "pids", ns(lab_name, elb)], capture_output=True, text=True).stdout.split()
    names = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # a process may end meanwhile
            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
    return {pid for pid, name in names.items() if name == "haproxy"}


def test_the_elb_stats_stay_readable_while_a_fault_restarts_haproxy(make_lab):
    """The idle-timeout fault restarts the ELB node's HAProxy on apply and on revert; the recorder reads the stats
    socket meanwhile (a matrix trial once lost a sample to the revert's restart: "Connection refused")."""
    lab = make_lab()
    sock = lab.backend.elb_stats_socket(lab, "elb-a1")
    haproxy_before = haproxy_pids(lab.name, "elb-a1")
    reads, errors, done = [0], [], threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                assert show_stat(sock)
                reads[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test reports
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        faults.apply(lab, "elb-idle-timeout", "elb-a1", ["timeout=1s"])
        faults.revert(lab)
    finally:
        done.set()
        thread.join()
    assert haproxy_pids(lab.name, "elb-a1").isdisjoint(haproxy_before)  # restarted: a new HAProxy answered
    assert errors == [] and reads[0] > 10, (errors[:3], reads[0])
