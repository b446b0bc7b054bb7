"""`lab load` against real labs: outcomes, histograms, bookkeeping against HAProxy, error classes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lab.cli.app import app
from lab.cli.commands import load as _load  # noqa: F401  registers the command
from lab.haproxy_stats import show_stat
from lab.hosts import pids_in_netns
from lab.load import LoadRun, LoadSpec, run_load
from tests.conftest import REPO, in_host

pytestmark = pytest.mark.root


def frontend_sessions(lab, port: int) -> int:
    """HAProxy's own session counter (stot) of one listener, summed over every ELB node."""
    total = 0
    for e in lab.topology.elb_nodes:
        for row in show_stat(lab.backend.elb_stats_socket(lab, e.name)):
            if row["pxname"] == f"listener-{port}" and row["svname"] == "FRONTEND":
                total += int(row["stot"])
    return total


def test_steady_load_through_the_elb_is_ok_and_counted_by_haproxy(make_lab, tmp_path):
    """Must show: a steady rate against a healthy lab: >= 99.9% ok; JSON with histograms and classes;
    the requests counted equal HAProxy's session counters for the run."""
    lab = make_lab()
    before = frontend_sessions(lab, 9090)
    out = tmp_path / "result.json"
    res = CliRunner().invoke(
        app,
        [
            *("load", "accounts", "-n", lab.name, "--rate", "300", "--duration", "10s"),
            *("--connections", "per-request", "--output", str(out)),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    sessions = frontend_sessions(lab, 9090) - before
    assert data["requests"] == data["scheduled"] == 3000
    assert data["ok_ratio"] >= 0.999, data["outcomes"]
    assert set(data["outcomes"]) == {"ok", "connect-timeout", "connect-refused", "reset", "read-timeout", "other"}
    assert sum(data["outcomes"].values()) == data["requests"]
    # One new connection per request, every one of them seen by an ELB node's listener: no lost bookkeeping.
    assert data["connections_opened"] == sessions == data["requests"]
    for name in ("latency", "connect", "rpc"):
        h = data["histograms_ms"][name]
        assert h["count"] == 3000
        assert 0 < h["p50_ms"] <= h["p90_ms"] <= h["p99_ms"] <= h["p99.9_ms"] <= h["max_ms"]
        assert data["hdr"][name]  # the full HDR histogram, encoded, for later merging
    # The per-second series streams to JSON Lines beside the summary, one line per slice.
    lines = (tmp_path / data["per_second_file"]).read_text().splitlines()
    assert len(lines) == data["slices"] >= 10
    assert sum(json.loads(line)["requests"] for line in lines) == 3000
    assert "p99.9" in res.output and "outcomes: ok 3000" in res.output.replace("  ", " ")


def test_pooled_connections_reuse_sessions_and_reach_every_elb_node(make_lab):
    lab = make_lab()
    before = frontend_sessions(lab, 9091)
    result = run_load(lab, LoadSpec(service="catalog", rate=400, duration=3, pool=6))
    assert result.requests == 1200 and result.ok_ratio == 1.0
    assert result.connections == 6 == frontend_sessions(lab, 9091) - before
    # DNS round robin over the ELB nodes: every ELB node got two of the six connections.
    for e in lab.topology.elb_nodes:
        rows = show_stat(lab.backend.elb_stats_socket(lab, e.name))
        stot = next(int(r["stot"]) for r in rows if r["pxname"] == "listener-9091" and r["svname"] == "FRONTEND")
        assert stot == 2, e.name


def test_ramp_and_slices_stream(make_lab):
    lab = make_lab()
    run = LoadRun(lab, LoadSpec(service="accounts", rate=100, rate_end=300, duration=4, via="node"))
    run.start()
    slices = list(run.slices())
    result = run.wait()
    assert result.requests == 800 and result.ok_ratio == 1.0  # (100 + 300) / 2 * 4
    # Slices sit on whole wall-clock seconds; the schedule started `offset` into the first one.
    offset = run.t0_wall - run.grid_wall
    dues = [run.spec.ramp.due(k) for k in range(800)]
    want = [sum(1 for t in dues if i - offset <= t < i + 1 - offset) for i in range(len(slices))]
    assert [s.scheduled for s in slices] == pytest.approx(want, abs=2)  # the linear ramp, second by second
    assert all(s.t_start == int(s.t_start) for s in slices)
    assert sum(s.requests for s in slices) == 800


def test_a_run_with_history_keeps_few_slices_and_readers_still_see_every_one(make_lab):
    """A long run's memory: with history=2 only the last slices stay, yet slices() and take_client get them all."""
    lab = make_lab()
    run = LoadRun(lab, LoadSpec(service="accounts", rate=100, duration=7, via="node"), history=2)
    run.start()
    seen = list(run.slices())
    result = run.wait()
    kept = run.snapshot()
    assert sum(s.requests for s in seen) == result.requests == 700
    assert len(kept) <= 4 < len(seen)
    assert result.to_dict()["slices"] == len(seen)
    assert not run.drained
    # A reader that fell behind gets what is still kept (the dropped seconds are in the total and the files).
    assert run.take_client(float("inf")).requests == sum(s.requests for s in kept)
    assert run.drained


def test_outcome_classes(make_lab):
    """connect-refused (pod down), read-timeout (slow RPC), reset (the ELB gives up on a dropped instance)."""
    # Quick runs keep the ELB's connect timeout real (5 s): a short one lets HAProxy give up within the call.
    lab = make_lab(time_scale=0.1, overrides=["elb.connect_timeout=500ms"])
    pod = lab.topology.pods_of("accounts")[0]
    lab.backend.control_pod(lab, pod.name, "stop")
    try:
        refused = run_load(lab, LoadSpec(service="accounts", rate=50, duration=1, via="pod", target=pod.name))
    finally:
        lab.backend.control_pod(lab, pod.name, "start")
    assert refused.total.outcomes["connect-refused"] == refused.requests == 50

    slow = run_load(
        lab, LoadSpec(service="accounts", rate=20, duration=1, method="work", payload=300, timeout=0.1, via="node")
    )
    assert slow.total.outcomes["read-timeout"] == slow.requests == 20

    # elb-a1 only knows node-a1 (cross-zone off); drop its NodePort: HAProxy retries, gives up, closes.
    victim = lab.topology.elb_targets(lab.topology.elb_nodes[0])[0].name
    in_host(
        lab.name, victim, "iptables", "-t", "raw", "-I", "PREROUTING", "-p", "tcp", "--dport", "30090", "-j", "DROP"
    )
    reset = run_load(
        lab,
        LoadSpec(service="accounts", rate=10, duration=1, target="elb-a1", connections="per-request", timeout=5.0),
    )
    assert reset.total.outcomes["reset"] == reset.requests == 10
    assert reset.total.details == {"reset:closed-by-peer": 10}


def test_bad_input_is_one_line(make_lab):
    lab = make_lab()
    runner = CliRunner()
    res = runner.invoke(app, ["load", "nosuch", "-n", lab.name, "--rate", "10", "--duration", "1"])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: unknown service 'nosuch'; services: accounts, catalog"
    res = runner.invoke(app, ["load", "accounts", "-n", lab.name, "--rate", "10", "--duration", "1", "--target", "x"])
    assert res.exit_code == 1 and res.output.startswith("Error: --target 'x' is not")
    assert res.output.count("\n") == 1 and "elb-a1, elb-b1, elb-c1" in res.output


def test_ctrl_c_prints_the_partial_result_and_leaves_nothing_running(make_lab):
    lab = make_lab()
    client = lab.hosts_by_role("client")[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "load", "accounts", "-n", lab.name, "--rate", "200", "--duration", "60"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    try:
        deadline = time.monotonic() + 20
        while not pids_in_netns([client.netns])[client.netns] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pids_in_netns([client.netns])[client.netns], "the load workers never started"
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "(interrupted: partial result)" in out
    assert "every load worker has exited" in err and "Traceback" not in err
    assert pids_in_netns([client.netns])[client.netns] == []  # no worker left in the client's namespace
    assert list(lab.state.path("run").glob("load-*.json*")) == []
