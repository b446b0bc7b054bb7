"""Repeated and sharded matrices for real: two shards merged give the unsharded verdicts; journals per repeat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.root
LAB = [sys.executable, "-m", "lab.cli.__main__"]

# Short and healthy: one fault-free load phase on the default topology, 3 s at the quick scale. Per-request
# calls, so every trial makes backend connections in the phase (pooled ones connect once, at its edge).
SCENARIO = """\
title: short healthy run for the repeat tests
hypothesis: a healthy lab under light load answers every call
topology: {file: default.yaml}
quick: {time_scale: 0.1}
phases:
  - {name: idle, kind: idle, duration: 10s}
  - name: steady
    kind: steady
    duration: 30s
    load: {service: accounts, rate: 20, connections: per-request}  # every call a backend connection: O2 is judged
  - {name: after, kind: recovery, duration: 10s}
expect:
  - {metric: client.ok_ratio, phase: steady, op: ">=", value: 0.99}
  - {metric: elb.HealthyHostCount, phase: steady, stat: min, op: "==", value: 3}
"""


def lab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LAB, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def verdicts(report_dir: Path) -> list[tuple]:
    results = json.loads((report_dir / "results.json").read_text())
    return [
        (
            s["id"],
            s["status"],
            sorted((o, v["verdict"], v["yes"], v["counted"]) for o, v in s["observations"].items()),
            [(e["text"], e["passed"], e["passed_runs"], e["counted"]) for e in s["expectations"]],
        )
        for s in results["scenarios"]
    ]


def test_two_shards_merged_give_the_unsharded_verdicts(tmp_path):
    scenario = tmp_path / "short.yaml"
    scenario.write_text(SCENARIO)
    base = ["matrix", str(scenario), "--quick", "--repeat", "2"]
    whole = lab(*base, "--report", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "no 0/2" in whole.stdout and "passed" in whole.stdout  # healthy: no observation reproduced, twice
    for i in (1, 2):
        shard = lab(*base, "--shard", f"{i}/2", "--report", str(tmp_path / f"shard-{i}"))
        assert shard.returncode == 0, shard.stdout + shard.stderr
    shards = [json.loads((tmp_path / f"shard-{i}" / "results.json").read_text())["shard"]["units"] for i in (1, 2)]
    assert shards == [["short#1"], ["short#2"]]
    merged = lab(
        "report", "merge", str(tmp_path / "shard-1"), str(tmp_path / "shard-2"), "--report", str(tmp_path / "m")
    )
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert verdicts(tmp_path / "m") == verdicts(tmp_path / "whole")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"short-default-r1.jsonl", "short-default-r2.jsonl", "short-default-repeats.png"} <= names
    # each repeat's journal holds its own verdicts
    journal = (tmp_path / "m" / "short-default-r2.jsonl").read_text().splitlines()
    assert sum(1 for line in journal if json.loads(line)["type"] == "verdict") == 2
    lone = lab("report", "merge", str(tmp_path / "shard-2"), "--report", str(tmp_path / "lone"))
    assert lone.returncode == 1 and "Missing shards: 1/2" in lone.stdout
