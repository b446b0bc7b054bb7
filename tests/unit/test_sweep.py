"""Scenario sweeps: the key syntax, validation of every point before anything runs, and the grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.scenarios.loader import expand_sweep
from lab.scenarios.matrix import load_all
from tests.conftest import single_error

SWEPT = """\
title: swept
hypothesis: a hypothesis long enough to pass
topology: {file: seed-2017.yaml}
sweep:
  elb.nodes_per_az: [1, 6]
  phases.steady.load.rate: [10, 20.5]
phases:
  - {name: idle, kind: idle, duration: 10s}
  - name: steady
    kind: steady
    duration: 10s
    load: {service: accounts, rate: 5}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_the_grid_one_point_each_topology_and_scenario_keys(tmp_path):
    points = expand_sweep(write(tmp_path, SWEPT))
    assert [p.point for p in points] == [
        ("elb.nodes_per_az=1", "phases.steady.load.rate=10"),
        ("elb.nodes_per_az=1", "phases.steady.load.rate=20.5"),
        ("elb.nodes_per_az=6", "phases.steady.load.rate=10"),
        ("elb.nodes_per_az=6", "phases.steady.load.rate=20.5"),
    ]
    last = points[-1]
    assert len(last.topology("default").elb_nodes) == 18  # 6 per AZ, 3 AZs
    assert last.scenario.phases[1].load.rate == 20.5 and last.scenario.sweep == {}
    assert last.label == "[elb.nodes_per_az=6,phases.steady.load.rate=20.5]"
    assert last.topology_point() == ["elb.nodes_per_az=6"]


def test_a_sweep_given_from_outside_replaces_the_files(tmp_path):
    points = expand_sweep(write(tmp_path, SWEPT), None, {"elb.cross_zone": [True, False]})
    assert [p.point for p in points] == [("elb.cross_zone=true",), ("elb.cross_zone=false",)]
    assert [p.topology("default").elb.cross_zone for p in points] == [True, False]


def test_the_matrix_runs_every_point(tmp_path):
    loaded = load_all([str(write(tmp_path, SWEPT))], False, [["nodes_per_az=2"]])
    assert len(loaded) == 4 and all(combo == ["nodes_per_az=2"] for _, combo in loaded)
    first, combo = loaded[0]
    assert len(first.topology("default", extra=combo).k8s_nodes) == 6 and len(first.topology("default").elb_nodes) == 3


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("elb.nodes_per_az: [1, 6]", "elb.nodes_per_az: [1, 99]"),
            "s.yaml:4: sweep point elb.nodes_per_az=99,phases.steady.load.rate=10: ",
        ),
        (("elb.nodes_per_az: [1, 6]", "elb.nodes_per_az: []"), "sweep.elb.nodes_per_az: give at least one value"),
        (("elb.nodes_per_az: [1, 6]", "elb.nodes_per_az: [1, 1]"), "sweep.elb.nodes_per_az: a value is listed twice"),
        (("elb.nodes_per_az: [1, 6]", "'elb..x': [1]"), "expected a dotted key such as elb.nodes_per_az"),
        (("elb.nodes_per_az: [1, 6]", "elb.nodes_per_az: [[1, 2]]"), "sweep.elb.nodes_per_az[0]"),
        (
            ("phases.steady.load.rate", "phases.busy.load.rate"),
            "s.yaml:4: --set phases.busy.load.rate: no list item named 'busy'",
        ),
        (
            ("[10, 20.5]", "[10, -1]"),
            "s.yaml:4: sweep point elb.nodes_per_az=1,phases.steady.load.rate=-1: "
            "phases[1].load.rate: must be from 0.01 to 100000, got -1",
        ),
        (
            ("elb.nodes_per_az: [1, 6]", "elb.nodes_per_az: [1, 2, 3, 4, 5, 6, 7, 8]\n  nodes_per_az: [1, 2, 3, 4, 5]"),
            "sweep: 80 points; at most 64 (each point is a lab run)",
        ),
    ],
)
def test_bad_sweeps_fail_before_anything_runs(tmp_path, change, expected):
    path = write(tmp_path, SWEPT.replace(*change))
    with pytest.raises(InputError) as exc:
        expand_sweep(path)
    assert expected in str(exc.value)


def test_validate_checks_every_point(tmp_path):
    path = write(tmp_path, SWEPT.replace("[1, 6]", "[1, 99]"))
    line = single_error(CliRunner().invoke(app, ["scenario", "validate", str(path)]))
    assert "sweep point elb.nodes_per_az=99" in line
    ok = CliRunner().invoke(app, ["scenario", "validate", str(write(tmp_path, SWEPT))])
    assert ok.exit_code == 0 and "4 sweep point(s)" in ok.output


def test_values_keep_their_text(tmp_path):
    text = SWEPT.replace("[1, 6]", "[1, '6']").replace("[10, 20.5]", "[0.5, '20']")
    points = expand_sweep(write(tmp_path, text))
    assert points[-1].point == ("elb.nodes_per_az=6", "phases.steady.load.rate=20")
    assert points[0].point == ("elb.nodes_per_az=1", "phases.steady.load.rate=0.5")
