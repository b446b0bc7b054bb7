"""The ELB's CloudWatch metrics measured from a real lab, checked against tcpdump and HAProxy's own view."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli.app import app
from lab.cli.commands import load as _load  # noqa: F401  registers the commands
from lab.cli.commands import metrics as _metrics  # noqa: F401
from lab.haproxy_stats import instance_health, show_stat
from lab.metrics.recorder import Recorder, read_series
from tests.conftest import in_host, ns

pytestmark = pytest.mark.root


@contextmanager
def capture(lab: str, host: str, pcap: Path, bpf: str):
    """tcpdump inside a lab host for the duration of the block (always stopped)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns(lab, host), "tcpdump", "-i", "any", "-nn", "-U", "-w", str(pcap), bpf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 5
        while not pcap.exists() and time.monotonic() < deadline:  # tcpdump writes the header once listening
            time.sleep(0.05)
        time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_intervals(rec: Recorder, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(rec.records) < n and time.monotonic() < deadline:
        time.sleep(0.2)


def handshakes(pcap: Path, instance_ip: str, port: int, t_from: float, t_to: float) -> tuple[int, int]:
    """(connect attempts, attempts answered with a SYN-ACK) to instance_ip:port whose first SYN is in [t_from, t_to)."""
    out = subprocess.run(["tcpdump", "-nn", "-tt", "-r", str(pcap)], capture_output=True, text=True).stdout
    first_syn: dict[str, float] = {}
    answered: set[str] = set()
    for line in out.splitlines():
        parts = line.split()
        if "IP" not in parts:
            continue
        i = parts.index("IP")
        src, dst, flags = parts[i + 1], parts[i + 3].rstrip(":"), line.split("Flags [", 1)[1].split("]", 1)[0]
        if dst == f"{instance_ip}.{port}" and flags == "S":
            first_syn.setdefault(src, float(parts[0]))
        elif src == f"{instance_ip}.{port}" and flags == "S.":
            answered.add(dst)
    attempts = {k for k, t in first_syn.items() if t_from <= t < t_to}
    return len(attempts), len(attempts & answered)


def test_idle_healthy_lab_has_no_backend_connection_errors(make_lab, tmp_path):
    """Must show: a healthy default lab at idle for 2 minutes: BackendConnectionErrors = 0, all instances healthy."""
    lab = make_lab()
    elb = lab.topology.elb_nodes[0]
    instance = lab.topology.elb_targets(elb)[0]
    ip = str(lab.plan.ip(instance.name))
    port = lab.topology.health_check_port
    pcap = tmp_path / "checks.pcap"
    with capture(lab.name, elb.name, pcap, f"tcp and host {ip} and port {port}"):
        rec = Recorder(lab, tmp_path / "idle.jsonl", interval=60)
        rec.start()
        wait_for_intervals(rec, 2, 120 + 30)
        rec.stop(final_interval=False)
    header, intervals, events = read_series(tmp_path / "idle.jsonl")
    assert len(intervals) == 2, events
    n_instances = len(lab.topology.k8s_nodes)
    for r in intervals:
        m = r["elb"]["metrics"]
        assert m["BackendConnectionErrors"]["all"] == 0, r["elb"]["backend_connection_errors"]
        assert m["HealthyHostCount"]["all"] == n_instances and m["UnHealthyHostCount"]["all"] == 0
        assert m["RequestCount"]["all"] == 0
        # Checks did happen (each ELB node checks its instance every 10 s): the zero is not a dead counter.
        assert r["elb"]["backend_connection_errors"]["attempts"] == pytest.approx(3 * 6, abs=1)
    # tcpdump agrees: every health check of the first ELB node got its SYN-ACK.
    attempts, answered = handshakes(pcap, ip, port, intervals[0]["t_start"], intervals[-1]["t_end"])
    assert attempts == pytest.approx(12, abs=1) and answered == attempts
    # HAProxy's own view, read independently: every instance InService on every ELB node.
    for e in lab.topology.elb_nodes:
        health = instance_health(show_stat(lab.backend.elb_stats_socket(lab, e.name)))
        assert {v["state"] for v in health.values()} == {"InService"}


def test_unreachable_nodeport_gives_the_health_check_error_floor(make_lab, tmp_path):
    """Must show: one node's NodePort dropped by hand: BCE at idle = ELB nodes checking it x checks per interval."""
    lab = make_lab(overrides=["elb.cross_zone=true"], time_scale=0.1)  # 3 ELB nodes check every instance
    victim = lab.topology.k8s_nodes[0].name
    ip = str(lab.plan.ip(victim))
    port = lab.topology.health_check_port
    in_host(
        lab.name, victim, "iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", str(port), "-j", "DROP"
    )
    interval = 10.0
    pcaps = {e.name: tmp_path / f"{e.name}.pcap" for e in lab.topology.elb_nodes}
    with (
        capture(lab.name, "elb-a1", pcaps["elb-a1"], f"tcp and host {ip} and port {port}"),
        capture(lab.name, "elb-b1", pcaps["elb-b1"], f"tcp and host {ip} and port {port}"),
        capture(lab.name, "elb-c1", pcaps["elb-c1"], f"tcp and host {ip} and port {port}"),
    ):
        time.sleep(2)  # let checks already in flight before the DROP end
        rec = Recorder(lab, tmp_path / "drop.jsonl", interval=interval, nodes=False)
        rec.start()
        wait_for_intervals(rec, 3, 3 * interval + 30)
        rec.stop(final_interval=False)
    header, intervals, events = read_series(tmp_path / "drop.jsonl")
    assert len(intervals) == 3, events
    per_interval = header["health_checks_per_interval"]["timing_out"]  # a check every second, timing out or not
    expected = 3 * per_interval
    n_elb = len(lab.topology.elb_nodes)
    errors = [r["elb"]["metrics"]["BackendConnectionErrors"]["all"] for r in intervals]
    assert sum(errors) / len(errors) == pytest.approx(expected, rel=0.10), errors
    for r, e in zip(intervals, errors, strict=True):
        bce = r["elb"]["backend_connection_errors"]
        # Checks start every 1 s, but a sample falls between two: each ELB node counts 9 to 11 in one interval.
        assert abs(e - expected) <= n_elb, bce
        assert bce["traffic"] == 0 and bce["health_check"] == e
        # Only the dropped instance fails, on every ELB node.
        for elb, per in bce["by_elb_node_and_instance"].items():
            assert {i for i, n in per.items() if n} == {victim}, (elb, per)
    # Independently: tcpdump's SYNs without a SYN-ACK over the same time, within 10%.
    t_from, t_to = intervals[0]["t_start"], intervals[-1]["t_end"]
    counted = 0
    for pcap in pcaps.values():
        attempts, answered = handshakes(pcap, ip, port, t_from - 0.5, t_to - 0.5)  # a check fails 0.5 s after its SYN
        assert answered == 0
        counted += attempts
    total = sum(r["elb"]["metrics"]["BackendConnectionErrors"]["all"] for r in intervals)
    assert total == pytest.approx(counted, rel=0.10)
    # And the ELB saw it: the instance is OutOfService on every ELB node, the others still InService.
    last = intervals[-1]["elb"]["instances"]
    assert all(view[victim] == "OutOfService" for view in last.values())
    assert all(s == "InService" for view in last.values() for i, s in view.items() if i != victim)


def test_metrics_cli_json_prometheus_and_plot(make_lab, tmp_path):
    lab = make_lab(time_scale=0.2)
    runner = CliRunner()
    res = runner.invoke(app, ["metrics", "-n", lab.name, "-i", "2", "--json"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert set(record["elb"]["metrics"]) == {
        "RequestCount",
        "BackendConnectionErrors",
        "HealthyHostCount",
        "UnHealthyHostCount",
        "Latency",
        "SurgeQueueLength",
        "SpilloverCount",
    }
    # Per ELB node and per AZ, as CloudWatch's dimensions.
    assert set(record["elb"]["metrics"]["HealthyHostCount"]["by_elb_node"]) == {e.name for e in lab.topology.elb_nodes}
    assert set(record["elb"]["metrics"]["HealthyHostCount"]["by_az"]) == {az.name for az in lab.topology.azs}
    node = record["nodes"][lab.topology.k8s_nodes[0].name]
    ct_count = int(in_host(lab.name, lab.topology.k8s_nodes[0].name, "conntrack", "-C").strip())
    assert abs(node["conntrack"]["count"] - ct_count) <= 5  # health checks come and go
    res = runner.invoke(app, ["metrics", "-n", lab.name, "-i", "1", "--prometheus"])
    assert res.exit_code == 0, res.output
    line = f'lab_elb_healthy_host_count{{lab="{lab.name}",elb_node="elb-a1",az="us-east-1a"}} 1'
    assert line in res.stdout
    assert "# TYPE lab_node_conntrack_entries gauge" in res.stdout
    # Record under load, then plot.
    run = tmp_path / "run.jsonl"
    res = runner.invoke(
        app, ["load", "accounts", "-n", lab.name, "--rate", "100", "--duration", "4", "--record", str(run), "-i", "2"]
    )
    assert res.exit_code == 0, res.output
    header, intervals, events = read_series(run)
    assert header["time_scale"] == 0.2 and header["scaled"]["health_check_interval_s"] == pytest.approx(2.0)
    assert sum(r["elb"]["metrics"]["RequestCount"]["all"] for r in intervals) == 16  # pooled: one session each
    assert sum((r["client"] or {}).get("requests", 0) for r in intervals) == 400
    assert [e["what"] for e in events] == ["load started", "load ended"]
    png = tmp_path / "run.png"
    res = runner.invoke(app, ["plot", str(run), "-o", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    res = runner.invoke(app, ["top", "-n", lab.name, "-i", "1", "--count", "1"])
    assert res.exit_code == 0, res.output
    assert "BackendConnectionErrors" in res.stdout and "conntrack entries" in res.stdout


def test_recorder_follows_loads_one_after_another(make_lab, tmp_path):
    """A scenario attaches one load per phase: every request of each shows up once, in step with the ELB."""
    from lab.load import LoadRun, LoadSpec

    lab = make_lab()
    rec = Recorder(lab, tmp_path / "phases.jsonl", interval=1, nodes=False)
    rec.start()
    results = []
    for rate in (150, 60):
        run = LoadRun(lab, LoadSpec(service="accounts", rate=rate, duration=2, connections="per-request"))
        run.start()
        rec.attach_client(run)
        results.append(run.wait())
    time.sleep(1.5)
    rec.stop()
    _, intervals, _ = read_series(tmp_path / "phases.jsonl")
    clients = sum((r["client"] or {}).get("requests", 0) for r in intervals)
    sessions = sum(r["elb"]["metrics"]["RequestCount"]["all"] for r in intervals)
    assert [r.requests for r in results] == [300, 120]
    assert clients == sessions == 420
    assert all(r["elb"]["metrics"]["BackendConnectionErrors"]["all"] == 0 for r in intervals)
