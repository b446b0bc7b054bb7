"""`lab fit` for real: a swept scenario runs one lab per point (real HAProxy checks refused by real
nodes), and the fit finds the point whose idle health-check floor matches the incident's figure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.root
LAB = [sys.executable, "-m", "lab.cli.__main__"]

# Every check refused (no service on 30999), cross-zone on: errors = 3 instances x ELB nodes x 6 per minute.
SCENARIO = """\
title: swept health-check floor
hypothesis: one refused health check per instance per ELB node every interval
topology:
  file: seed-2017.yaml
  set: [elb.cross_zone=true, "elb.health_check.target=TCP:30999"]
quick: {time_scale: 0.1}
sweep:
  elb.nodes_per_az: [1, 2]
phases:
  - {name: idle, kind: idle, duration: 80s}
"""

INCIDENT = """\
title: an idle floor of ~108 a minute
hypotheses: [{scenario: SCENARIO}]
figures:
  - id: floor
    metric: elb.BackendConnectionErrors
    statistic: Sum
    periods: [60, 300]
    value: "~108"
    conditions: {phase: idle, instances: 3}
    sources: ["made up for the test: 3 instances x 6 ELB nodes x 6 checks a minute"]
"""


def fit_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("lab.f-")}


def test_fit_runs_each_sweep_point_and_ranks_the_matching_one(tmp_path):
    scenario = tmp_path / "floor.yaml"
    scenario.write_text(SCENARIO)
    incident = tmp_path / "incident.yaml"
    incident.write_text(INCIDENT.replace("SCENARIO", str(scenario)))
    before = fit_namespaces()
    report = tmp_path / "r"
    proc = subprocess.run(
        [*LAB, "fit", str(incident), "--quick", "--report", str(report), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    row = result["table"][0]["match"]
    assert row["point"] == ["elb.nodes_per_az=2"] and row["period"] == 60 and row["within"], row
    assert 108 * 0.85 <= row["lab"] <= 108 * 1.15
    ranked = [h["key"] for h in result["hypotheses"]]
    assert ranked[0].endswith("[elb.nodes_per_az=2]") and ranked[1].endswith("[elb.nodes_per_az=1]")
    # one journal per point, each from a lab with that many ELB nodes, and the command that replays it
    journals = sorted(p.name for p in report.glob("*.jsonl"))
    assert journals == ["floorelb-nodes_per_az-1-default-r1.jsonl", "floorelb-nodes_per_az-2-default-r1.jsonl"]
    header = json.loads((report / journals[1]).read_text().splitlines()[0])
    assert len(header["elb_nodes"]) == 6
    assert f"--sweep elb.nodes_per_az=2 --quick --report {report}" in row["command"]
    assert (report / "fit.md").exists() and (report / "fit-floor.png").exists()
    assert fit_namespaces() == before  # every lab it made is gone
