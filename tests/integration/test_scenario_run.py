"""Scenario runs for real: verdicts, journals and reports; and interrupted matrices leave nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.root
LAB = [sys.executable, "-m", "lab.cli.__main__"]

SCENARIO = """\
title: short run for the tests
hypothesis: a healthy lab with a little loss on one node stays mostly healthy
topology: {file: default.yaml}
phases:
  - {name: idle, kind: idle, duration: 20s}
  - name: steady
    kind: steady
    duration: 30s
    load: {service: accounts, rate: 50, connections: pooled, pool: 4}
    faults:
      - {kind: link, target: node-c1, params: {loss: 1%}, at: 5s, for: 10s}
expect:
  - {metric: elb.BackendConnectionErrors, phase: idle, op: "==", value: 0}
  - {metric: client.ok_ratio, phase: steady, op: ">", value: 0.9}
  - {metric: elb.HealthyHostCount, phase: steady, stat: min, op: "==", value: 3}
"""


def lab_states() -> set[str]:
    root = Path("/run/lab")
    return {p.name for p in root.iterdir() if p.name.startswith(("m-", "s-"))} if root.exists() else set()


def namespaces() -> set[str]:
    """Namespaces of scenario and matrix labs (other tests' labs may come and go meanwhile)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(("lab.m-", "lab.s-"))}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAB, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_a_scenario_runs_and_reports(tmp_path):
    scenario = tmp_path / "short.yaml"
    scenario.write_text(SCENARIO)
    before_ns, before_labs = namespaces(), lab_states()
    proc = run_cli("scenario", "run", str(scenario), "--time-scale", "0.1", "--report", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "r"
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.html", "junit.xml", "results.json"}
    results = json.loads((out / "results.json").read_text())
    entry = results["scenarios"][0]
    assert entry["status"] == "passed" and all(e["passed"] for e in entry["expectations"])
    journal = [json.loads(line) for line in (out / entry["trials"][0]["runs"][0]["journal"]).read_text().splitlines()]
    events = [r["what"] for r in journal if r["type"] == "event"]
    assert "fault applied" in events and "fault reverted" in events
    assert events.index("fault applied") < events.index("fault reverted")
    assert sum(1 for r in journal if r["type"] == "interval") >= 4
    assert sum(1 for r in journal if r["type"] == "verdict") == 3
    assert namespaces() == before_ns and lab_states() == before_labs


def test_a_failed_expectation_exits_1(tmp_path):
    scenario = tmp_path / "fails.yaml"
    scenario.write_text(SCENARIO.replace('op: "==", value: 3}', 'op: "==", value: 4}'))
    proc = run_cli("scenario", "run", str(scenario), "--time-scale", "0.05", "--report", str(tmp_path / "r"))
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "HealthyHostCount" in proc.stdout


def processes_of(labs: set[str]) -> set[int]:
    """Processes inside the labs' namespaces (pods, HAProxy, load workers) or naming their state directory."""
    inodes = set()
    for ns in namespaces():
        if ns.split(".")[1] in labs:
            with contextlib.suppress(OSError):
                inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if os.stat(entry / "ns" / "net").st_ino in inodes or any(
                f"/run/lab/{lab}".encode() in cmdline for lab in labs
            ):
                found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.add(pid)
    return out


def _start_matrix(tmp_path: Path) -> tuple[subprocess.Popen, set[str], set[int]]:
    """A quick baseline matrix, caught while its lab is up and its load is running."""
    before = namespaces()
    proc = subprocess.Popen(
        [*LAB, "matrix", "baseline", "--quick", "--report", str(tmp_path / "r")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        labs = {n.split(".")[1] for n in namespaces() - before}
        if labs:
            time.sleep(3.5)  # into its steady phase: load workers and recorder running
            return proc, labs, processes_of(labs)
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the matrix never brought a lab up")


def test_ctrl_c_during_a_matrix_leaves_nothing(tmp_path):
    proc, labs, pids = _start_matrix(tmp_path)
    assert len(pids) >= 5, "pods, HAProxy and load workers should be running"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert {n for n in namespaces() if n.split(".")[1] in labs} == set()
    assert alive(pids) == set()


def test_kill_9_during_a_matrix_then_clean_leaves_nothing(tmp_path):
    proc, labs, pids = _start_matrix(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert {n for n in namespaces() if n.split(".")[1] in labs}, "kill -9 leaves the running lab behind"
    clean = run_cli("clean", *[arg for lab in sorted(labs) for arg in ("--name", lab)])
    assert clean.returncode == 0, clean.stderr
    assert {n for n in namespaces() if n.split(".")[1] in labs} == set()
    assert not any(Path(f"/run/lab/{lab}").exists() for lab in labs)
    assert alive(pids) == set()
