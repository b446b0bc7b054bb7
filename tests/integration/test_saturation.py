"""The lab knows when it is the bottleneck: a run past the machine is flagged lab-limited, a modest baseline is
not, and neither is a light load on a machine kept busy by others.

Real labs, the real `lab load` CLI; the CPU hogs are busy loops started inside the lab's node namespaces
for the run (checked there with `ip netns pids`) and always killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.root

LAB = [sys.executable, "-m", "lab.cli.__main__"]


def lab_load(lab: str, *args: str, record: str | None = None) -> dict:
    extra = ["--record", record, "--interval", "5"] if record else []
    proc = subprocess.run(
        [*LAB, "load", "accounts", "-n", lab, *args, *extra, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_a_modest_baseline_is_not_lab_limited(make_lab, tmp_path):
    lab = make_lab()
    run = tmp_path / "run.jsonl"
    data = lab_load(lab.name, "--rate", "50", "--duration", "20s", "-c", "per-request", record=str(run))
    assert data["ok_ratio"] >= 0.999, data["outcomes"]
    assert data["lab_limited"] is False, data["limited_reasons"]
    assert data["histograms_ms"]["send_lag"]["count"] == data["requests"] == 1000
    intervals = [json.loads(line) for line in run.read_text().splitlines() if '"type":"interval"' in line]
    assert intervals and all("saturation" in r for r in intervals)
    s = intervals[1]["saturation"]
    # The lab's own processes are found and measured: HAProxy, the pods, the load workers.
    assert {"HAProxy", "pods", "load generator"} <= set(s["lab_cpu"]), s["lab_cpu"]
    assert s["send_lag_ms"]["count"] > 0 and s["faults"] == []


def test_a_busy_machine_alone_does_not_flag_a_light_load(make_lab, tmp_path):
    """Busy loops on every core make the machine 100% busy, yet the kernel runs the lab's event loops as soon
    as they wake: a light load is not lab-limited, and the hogs show in its saturation sections. (Measured:
    even 1,500 connections/s next to these hogs kept p50 1.3 ms and was not flagged; what flags a run is the
    lab's own work outgrowing the machine, below.)"""
    lab = make_lab()
    nodes = [n.name for n in lab.topology.k8s_nodes]
    hogs: list[subprocess.Popen] = []
    run = tmp_path / "light.jsonl"
    try:
        for i in range(2 * (os.cpu_count() or 1) + 1):  # more busy loops than cores: every core stays busy
            hogs.append(lab.host(nodes[i % len(nodes)]).popen(["sh", "-c", "while :; do :; done"]))
        found = subprocess.run(
            ["ip", "netns", "pids", f"lab.{lab.name}.{nodes[0]}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert {str(p.pid) for p in hogs[:: len(nodes)]} & set(found), "the busy loops run in the lab's node"
        light = lab_load(lab.name, "--rate", "50", "--duration", "15s", "-c", "per-request", record=str(run))
    finally:
        for p in hogs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()
    sections = [json.loads(line)["saturation"] for line in run.read_text().splitlines() if '"type":"interval"' in line]
    steady = sections[1]
    assert steady["cpu"]["busy"] >= 0.95 and steady["lab_cpu"]["nodes"] >= 1.0, steady
    assert light["lab_limited"] is False, light["limited_reasons"]


def test_a_rate_beyond_the_machine_is_flagged(make_lab):
    # 3,000 new connections/s still passes on this 2-core machine when it is quiet (100% ok, p99 27 ms);
    # 8,000/s is far past it (23% ok, the pods drop at their accept queues, the generator falls behind).
    lab = make_lab()
    data = lab_load(lab.name, "--rate", "8000", "--duration", "5s", "-c", "per-request")
    assert data["lab_limited"] is True
    reasons = " ".join(data["limited_reasons"])
    assert "the load generator sent requests up to" in reasons or "machine CPU" in reasons, reasons
