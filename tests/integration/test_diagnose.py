"""`lab diagnose` on real labs: silent on healthy nodes, loud on a node whose conntrack table the real
conntrack-exhaustion fault filled; its figures checked with conntrack -C / -S run independently."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.teach.diagnose import ALARMING, diagnose
from tests.conftest import REPO, in_host

pytestmark = pytest.mark.root


def lab_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=180
    )


def alarms(report: dict) -> list[str]:
    return [f["title"] for f in report["findings"] if f["severity"] in ALARMING]


@pytest.mark.parametrize("topology", ["default.yaml", "seed-2017.yaml"])
def test_healthy_nodes_raise_nothing_alarming(make_lab, topology):
    lab = make_lab(topology)
    for spec in lab.topology.k8s_nodes:
        report = diagnose(lab.host(spec.name), interval=0.3)
        assert report["verdict"] == "healthy", alarms(report)
        assert report["conntrack"]["fill"]["max"] > 0 and report["conntrack"]["stats"] is not None
        assert not [c for c in report["checks"] if c["id"].startswith("unavailable")], report["checks"]


def test_conntrack_exhaustion_is_reported_on_that_node_only(make_lab):
    lab = make_lab(time_scale=0.05)  # health checks every 0.5 s keep knocking on the full table
    apply = lab_cli(
        "fault", "apply", "conntrack-exhaustion", "--target", "node-b1", "mode=fill", "free=0", "-n", lab.name
    )
    assert apply.returncode == 0, apply.stderr
    count = int(in_host(lab.name, "node-b1", "conntrack", "-C").strip())
    limit = int(in_host(lab.name, "node-b1", "sysctl", "-n", "net.netfilter.nf_conntrack_max").strip())
    assert count >= 0.99 * limit, "the fault did not fill the table: nothing to diagnose"

    proc = lab_cli("diagnose", "node-b1", "-n", lab.name, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "critical"
    full = next(f for f in report["findings"] if f["id"] == "conntrack-full")
    assert full["severity"] == "critical" and "% full" in full["title"]
    assert "conntrack -S" in full["command"] and "drop=" in full["detail"]
    assert full["evidence"]["max"] == limit and full["evidence"]["count"] >= 0.99 * limit
    # the drop counter it quotes is the kernel's, as conntrack -S shows it
    stats = in_host(lab.name, "node-b1", "conntrack", "-S")
    kernel_drops = sum(int(part.split("=")[1]) for part in stats.split() if part.startswith("drop="))
    assert full["evidence"]["drop"] <= kernel_drops

    text = lab_cli("diagnose", "node-b1", "-n", lab.name)
    assert text.returncode == 0 and "CRITICAL" in text.stdout and "conntrack table" in text.stdout

    for healthy in ("node-a1", "node-c1"):
        report = diagnose(lab.host(healthy), interval=0.3)
        assert report["verdict"] == "healthy", (healthy, alarms(report))


def test_diagnose_local_reads_this_namespace_without_changing_it():
    before = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    proc = lab_cli("diagnose", "--local", "--interval", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["host"] == "local" and report["verdict"] in ("healthy", "warning", "critical")
    assert {c["id"] for c in report["checks"]} >= {"conntrack-drop", "timewait"}
    after = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    strip = [ln for ln in before.splitlines() if not ln.startswith("#")]
    assert strip == [ln for ln in after.splitlines() if not ln.startswith("#")]
