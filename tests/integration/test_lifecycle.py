"""Lifecycle guarantees: nothing left after down, crashes or failures; two labs side by side; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab import lifecycle, rpc
from lab.cli import app
from lab.errors import LabError
from lab.lab import Lab
from lab.state import STATE_ROOT
from tests.conftest import REPO, TOPOLOGIES, lab_namespaces, unique_lab_name

pytestmark = pytest.mark.root
LAB = [sys.executable, "-m", "lab.cli.__main__"]


def processes_of(lab: str) -> list[int]:
    """Any process whose command line or namespace belongs to the lab."""
    found = []
    marker = f"/run/lab/{lab}".encode()
    inodes = set()
    for n in lab_namespaces(lab):
        try:
            inodes.add(os.stat(f"/run/netns/{n}").st_ino)
        except OSError:
            continue
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            netns = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue
        if marker in cmdline or netns in inodes:
            found.append(int(entry.name))
    return found


def assert_gone(lab: str) -> None:
    assert lab_namespaces(lab) == []
    assert not (STATE_ROOT / lab).exists()
    assert processes_of(lab) == []


def test_down_removes_namespaces_processes_and_state(make_lab):
    lab = make_lab()
    assert processes_of(lab.name), "HAProxy, pods and the supervisor should be running"
    result = lifecycle.down(lab.name)
    assert result["was_up"] and len(result["removed"]) == len(lab.plan.hosts)
    assert_gone(lab.name)
    assert lifecycle.down(lab.name)["was_up"] is False  # idempotent


def test_kill_9_during_up_then_clean_leaves_nothing():
    name = unique_lab_name("k")
    proc = subprocess.Popen(
        [*LAB, "up", "-t", str(TOPOLOGIES / "default.yaml"), "--name", name, "--set", "nodes_per_az=12"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(lab_namespaces(name)) < 10:
            time.sleep(0.005)
        assert len(lab_namespaces(name)) >= 10, "lab up did not get far enough to be interrupted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lab_namespaces(name), "kill -9 should leave a half-built lab behind"
    # --name: a test must never remove labs it did not make (a developer's, or another test's)
    out = subprocess.run([*LAB, "clean", "--name", name], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"removed lab '{name}'" in out.stdout
    assert_gone(name)


def test_kill_9_of_the_supervisor_takes_its_children_and_clean_finishes(make_lab):
    lab = make_lab()
    sup = lab.info["supervisor_pid"]
    children = [p["pid"] for p in lab.backend.processes(lab)]
    os.kill(sup, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.05)
    assert not any(
        Path(f"/proc/{pid}/cmdline").exists() and Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children
    )
    result = CliRunner().invoke(app, ["clean", "--name", lab.name])
    assert result.exit_code == 0
    assert_gone(lab.name)


def test_a_failure_halfway_through_up_rolls_everything_back(monkeypatch):
    import lab.backends.netns as netns_backend

    def broken(*_args, **_kwargs):
        raise LabError("injected failure while applying kube-proxy rules")

    monkeypatch.setattr(netns_backend, "apply_kube_proxy", broken)
    lab = lifecycle.prepare(TOPOLOGIES / "default.yaml", unique_lab_name("f"))
    with pytest.raises(LabError, match="injected failure"):
        lifecycle.up(lab)
    assert_gone(lab.name)


def test_two_labs_run_side_by_side_without_interfering(make_lab):
    first = make_lab()
    second = make_lab()
    for lab in (first, second):
        who = rpc.call(lab, "accounts", "whoami", [], rpc.resolve(lab, "accounts", "elb", "elb-a1"))["result"]
        assert who["service"] == "accounts"
    lifecycle.down(first.name)
    assert_gone(first.name)
    assert len(lab_namespaces(second.name)) == len(second.plan.hosts)
    who = rpc.call(second, "catalog", "whoami", [], rpc.resolve(second, "catalog", "elb", "elb-b1"))["result"]
    assert who["service"] == "catalog"


def test_bringing_up_a_lab_that_is_already_up_is_one_clear_error(make_lab):
    lab = make_lab()
    result = CliRunner().invoke(app, ["up", "--name", lab.name])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: lab '{lab.name}' is already up; `lab down --name {lab.name}` first, or choose another --name"
    ]
    assert Lab.load(lab.name).info["status"] == "up"  # the running lab is untouched


def test_a_cidr_overlapping_the_hosts_routes_is_rejected_before_anything_is_created():
    routes = json.loads(subprocess.run(["ip", "-json", "route"], capture_output=True, text=True, check=True).stdout)
    nets = [r["dst"] for r in routes if r["dst"] != "default" and "/" in r["dst"]]
    if not nets:
        pytest.skip("this host has no non-default routes to collide with")
    name = unique_lab_name("c")
    result = CliRunner().invoke(app, ["up", "--name", name, "--set", f"vpcs.client.cidr={nets[0]}"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith("Error: ") and "overlaps this host's route" in line and "\n" not in line
    assert_gone(name)


def test_demo_tour_calls_through_every_listener_and_elb_node_then_leaves_nothing():
    name = unique_lab_name()
    proc = subprocess.run(
        [*LAB, "demo", "--tour-only", "--name", name], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("│ :")]
    pairs = {(cells[0].split()[1], cells[1]) for cells in ([c.strip() for c in r.strip("│").split("│")] for r in rows)}
    services = ["accounts", "catalog"]  # default.yaml's listeners
    assert pairs == {(s, e) for s in services for e in ("elb-a1", "elb-b1", "elb-c1")}
    assert "InService" in proc.stdout and "processes 10/10 running" in proc.stdout
    assert_gone(name)
