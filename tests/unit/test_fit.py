"""The fit on synthetic recorded runs: conversion to CloudWatch statistics and periods, conditions, series
shape, the period shared by a graph's figures, ranking and pairs. No lab runs (lab.incidents.fit is pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.incidents import cloudwatch
from lab.incidents.files import figure_from_series
from lab.incidents.fit import RunData, fit, lab_value, match_figure, shape_correlation
from lab.models.incident import Conditions, Figure, Incident
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "cloudwatch"
T0 = 1_000_000.0


def interval(
    t: float, errors: dict[str, float], requests: dict[str, float] | None = None, checks=True, unhealthy: int = 0
) -> dict:
    requests = requests or {n: 0 for n in errors}
    total = sum(errors.values())
    return {
        "t_start": t,
        "t_end": t + 1.0,
        "elb": {
            "metrics": {
                "BackendConnectionErrors": {"all": total, "by_elb_node": errors},
                "RequestCount": {"all": sum(requests.values()), "by_elb_node": requests},
                "UnHealthyHostCount": {"all": unhealthy, "by_elb_node": {n: unhealthy for n in errors}},
            },
            "backend_connection_errors": {"health_check": total if checks else 0, "traffic": 0 if checks else total},
        },
    }


def run(
    errors_per_node: float,
    *,
    elb_nodes: int = 3,
    instances: int = 3,
    cross_zone: bool = True,
    scale: float = 0.1,
    hypothesis: str = "h",
    point: tuple[str, ...] = (),
    load: tuple[float, float, float] | None = None,  # (requests/s, traffic errors/s, seconds) in a steady phase
    idle_s: int = 12,
    faults: bool = True,
    variant: str = "default",
) -> RunData:
    """A run: an idle phase of `idle_s` 1-s intervals with `errors_per_node` check errors per ELB node each,
    then optionally a steady phase with traffic, then a recovery phase like the idle one."""
    names = [f"elb-{i}" for i in range(elb_nodes)]
    intervals, phases, t = [], [], T0
    rows = [("idle", "idle", idle_s, None)]
    if load:
        rows += [("steady", "steady", int(load[2]), load), ("after", "recovery", idle_s, None)]
    for name, kind, seconds, ld in rows:
        start = t
        for _ in range(seconds):
            if ld:
                per = {n: ld[0] / elb_nodes for n in names}
                bad = {n: ld[1] / elb_nodes + errors_per_node for n in names}
                iv = interval(t, bad, per, checks=False)
                iv["elb"]["backend_connection_errors"] = {"health_check": errors_per_node * elb_nodes, "traffic": ld[1]}
            else:
                iv = interval(t, {n: errors_per_node for n in names}, unhealthy=instances if faults else 0)
            intervals.append(iv)
            t += 1.0
        phase = {"name": name, "kind": kind, "t_start": start, "t_end": t, "faults": [{"kind": "x"}] if faults else []}
        if ld:
            phase["load"] = {
                "requests": 100,
                "ok_ratio": 0.5,
                "outcomes": {"connect-timeout": 5},
                "spec": {"connections": "per-request"},
            }
        phases.append(phase)
    header = {
        "time_scale": scale,
        "cross_zone": cross_zone,
        "elb_nodes": [{"name": n, "instances": [f"node-{i}" for i in range(instances)]} for n in names],
    }
    return RunData(
        hypothesis,
        point,
        variant,
        f"/r/{hypothesis}-{variant}.jsonl",
        f"lab fit i.yaml {hypothesis}",
        header,
        intervals,
        phases,
    )


def figure(**kw) -> Figure:
    base = {
        "id": "f",
        "metric": "elb.BackendConnectionErrors",
        "value": "~300",
        "periods": [60, 300],
        "conditions": {"phase": "idle"},
        "sources": ["s"],
    }
    return Figure.model_validate(base | kw)


IDLE = {"name": "idle", "kind": "idle", "t_start": T0, "t_end": T0 + 12}


def test_a_counter_in_every_statistic_and_period_per_elb_second():
    # 3 ELB nodes, each 3 refused checks per wall second at time scale 0.1 (= per 10 ELB seconds):
    # 3 x 3 x 6 = 54 per ELB minute, as the ELB's own 10 s checks would give.
    r = run(3)
    assert lab_value(figure(statistic="Sum"), r, IDLE, 60) == pytest.approx(54)
    assert lab_value(figure(statistic="Sum"), r, IDLE, 300) == pytest.approx(270)
    assert lab_value(figure(statistic="Average"), r, IDLE, 60) == pytest.approx(18)
    assert lab_value(figure(statistic="Maximum"), r, IDLE, 60) == pytest.approx(18)
    assert lab_value(figure(statistic="SampleCount"), r, IDLE, 60) == 3


def test_traffic_counts_per_wall_second_the_workload_is_not_scaled():
    r = run(0, load=(100, 0, 10))
    steady = r.phases[1]
    f = figure(metric="elb.RequestCount", conditions={"phase": "load"})
    assert lab_value(f, r, steady, 60) == pytest.approx(6000)  # 100/s is 100/s whatever the ELB's time scale
    share = figure(metric="elb.backend_success_share", statistic="Average", value="~10%", conditions={"phase": "load"})
    r2 = run(0, load=(10, 90, 10))
    assert lab_value(share, r2, r2.phases[1], 60) == pytest.approx(0.1)
    timeouts = figure(
        metric="client.timeout_ratio", statistic="Average", value=None, at_least=0.001, conditions={"phase": "load"}
    )
    assert lab_value(timeouts, r2, r2.phases[1], 60) == pytest.approx(0.05)


def test_conditions_decide_which_runs_a_figure_is_compared_with():
    f = figure(conditions={"phase": "idle", "instances": 9, "cross_zone": True})
    m, why = match_figure(f, run(3, instances=3))
    assert m is None and why == "3 instances per ELB node, not 9"
    m, why = match_figure(f, run(3, instances=9, cross_zone=False))
    assert m is None and why == "cross-zone off"
    m, _ = match_figure(f, run(9, instances=9))
    assert m is not None and m.lab == pytest.approx(162) and m.period == 60 or m.period == 300
    control = figure(value=0, abs_tolerance=1, conditions={"phase": "idle", "healthy_backends": True})
    assert match_figure(control, run(3))[1] == "backends faulty"
    m, _ = match_figure(control, run(0, faults=False))
    assert m.within and m.error == 0 and m.error_kind == "absolute"


def test_after_load_takes_the_floor_not_the_tail():
    r = run(3, load=(100, 500, 6))
    f = figure(conditions={"phase": "after-load"})
    m, _ = match_figure(f, r, [60])
    assert m.phase == "after (second half)" and m.lab == pytest.approx(54)


def test_figures_of_one_graph_get_one_period():
    # 54/min and 162/min: over 300 s the first is 270 (within 15% of 300) but the second 810 (not ~1,000)
    three = figure(id="three", graph="g", conditions={"phase": "idle", "instances": 3})
    nine = figure(id="nine", graph="g", value="~1,000", conditions={"phase": "idle", "instances": 9})
    inc = Incident(title="two floors", figures=[three, nine])
    small = [run(3, instances=3, variant="three"), run(9, instances=9, variant="nine")]
    result = fit(inc, small)
    (h,) = result["hypotheses"]
    assert h["explains"] == ["three"] and {m.period for m in h["best"].values()} == {300}
    # six ELB nodes per AZ (18): 324 and 972 per minute, both within 15% at 60 s
    big = [
        run(3 * 6, instances=3, variant="three", point=("elb.nodes_per_az=6",)),
        run(9 * 6, instances=9, variant="nine", point=("elb.nodes_per_az=6",)),
    ]
    result = fit(inc, small + big)
    top = result["hypotheses"][0]
    assert top["key"] == "h [elb.nodes_per_az=6]" and top["explains"] == ["nine", "three"]
    assert [round(row["match"]["lab"]) for row in result["table"]] == [324, 972]
    assert all(row["match"]["period"] == 60 for row in result["table"])


def test_pairs_explain_what_no_single_hypothesis_does():
    floor = figure(id="floor", conditions={"phase": "idle"})
    share = figure(
        id="share", metric="elb.backend_success_share", statistic="Average", value="~10%", conditions={"phase": "load"}
    )
    inc = Incident(title="two mechanisms", figures=[floor, share])
    fanout = run(300 / 18, hypothesis="fanout", load=(100, 0, 6))  # 300/min idle floor, all connects succeed
    exhaustion = run(0, hypothesis="exhaustion", load=(10, 90, 6))  # no floor, 10% succeed
    result = fit(inc, [fanout, exhaustion])
    assert [h["explains"] for h in result["hypotheses"]] == [["floor"], ["share"]] or [
        h["explains"] for h in result["hypotheses"]
    ] == [["share"], ["floor"]]
    (pair,) = result["pairs"]
    assert sorted(pair["members"]) == ["exhaustion", "fanout"] and pair["explains"] == ["floor", "share"]


def test_a_figure_no_run_can_speak_to_says_why():
    f = figure(conditions={"phase": "idle", "instances": 9})
    result = fit(Incident(title="nine", figures=[f]), [run(3, instances=3, hypothesis="a")])
    row = result["table"][0]
    assert row["match"] is None and "a: default: 3 instances per ELB node, not 9" in row["why_not"]


def test_shape_correlation():
    assert shape_correlation([0, 1, 4, 1, 0], [0, 10, 40, 10, 0]) == pytest.approx(1.0)
    assert shape_correlation([0, 1, 4, 1, 0], [4, 3, 0, 3, 4], max_shift=0) == pytest.approx(-1.0)
    # a burst one period later in the lab's timeline has the same shape: runs and exports start anywhere
    assert shape_correlation([0, 0, 5, 5, 0, 0, 0, 0], [0, 0, 0, 5, 5, 0, 0, 0]) == pytest.approx(1.0)
    assert shape_correlation([0, 0, 5, 5, 0, 0, 0, 0], [0, 0, 0, 5, 5, 0, 0, 0], max_shift=0) < 0.5
    assert shape_correlation([5, 5, 5], [1, 2, 3]) == 0.0 and shape_correlation([5, 5], [7, 7, 7]) == 1.0
    # different lengths: compared on a common time axis
    assert shape_correlation([0, 2, 4], [0, 1, 2, 3, 4]) == pytest.approx(1.0)


def test_an_imported_get_metric_data_series_against_runs_ranks_the_one_with_its_shape():
    # The fixture: 0 for three minutes, ~4,400 a minute for four, back to 0: a burst under load.
    texts = [(FIXTURES / n).read_text() for n in ("get-metric-data-page1.json", "get-metric-data-page2.json")]
    series = cloudwatch.read_export(texts, "pages")
    fig = figure_from_series(
        series, "burst", "elb.BackendConnectionErrors", "Sum", None, Conditions(phase="load"), "pages"
    )
    inc = Incident(title="imported", figures=[fig])
    # a burst: no check errors, 4,400 traffic errors per minute (73/s) during the steady phase
    burst = run(0, hypothesis="burst", load=(10, 4400 / 60, 24), idle_s=18)
    floor = run(4400 / 60 * 0.1 / 3, hypothesis="floor", load=(10, 0, 24), idle_s=18)  # the same level, flat
    result = fit(inc, [floor, burst])
    top = result["hypotheses"][0]
    assert top["key"] == "burst"
    m = top["best"]["burst"]
    assert m.shape > 0.9 and m.period == 60 and len(m.lab_series) == 10
    assert result["hypotheses"][1]["best"]["burst"].shape < 0.5


def test_report_writes_table_and_commands(tmp_path: Path):
    from lab.incidents import report

    f = figure(conditions={"phase": "idle"})
    inc = Incident(title="one", figures=[f])
    runs = [run(300 / 18, hypothesis="fanout")]
    result = fit(inc, runs)
    meta = {"runs": 1, "points": 1, "note": "quick timers", "commands": {runs[0].command: [runs[0].journal]}}
    files = report.write(result, inc, runs, meta, tmp_path)
    md = Path(files["fit.md"]).read_text()
    assert "| figure | observed | best hypothesis and parameters | lab value | error | within |" in md
    assert "`lab fit i.yaml fanout`" in md
    assert (tmp_path / "fit-f.png").exists()


def recorded(tmp_path: Path, runs: list[RunData]) -> Path:
    """A report directory as `lab fit` leaves it: runs.json and one journal per run."""
    import json

    tmp_path.mkdir(parents=True, exist_ok=True)
    entries = []
    for r in runs:
        journal = tmp_path / Path(r.journal).name
        lines = [{"type": "run", **r.header}] + [{"type": "interval", **i} for i in r.intervals]
        journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
        entries.append(
            {
                "id": r.hypothesis,
                "hypothesis_id": r.hypothesis,
                "point": list(r.point),
                "command": r.command,
                "runs": [{"variant": r.variant, "journal": journal.name, "phases": r.phases}],
            }
        )
    (tmp_path / "runs.json").write_text(json.dumps({"scenarios": entries}))
    return tmp_path


def test_fit_cli_from_recorded_runs(tmp_path):
    from typer.testing import CliRunner

    from lab.cli import app

    runs_dir = recorded(tmp_path / "runs", [run(300 / 18, hypothesis="fanout"), run(0, hypothesis="quiet")])
    incident = tmp_path / "i.yaml"
    incident.write_text(
        "title: one floor\nfigures:\n  - id: floor\n    metric: elb.BackendConnectionErrors\n"
        '    value: "~300"\n    conditions: {phase: idle}\n    sources: [a sentence]\n'
    )
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["fit", str(incident), "--from", str(runs_dir), "--report", str(out)])
    assert result.exit_code == 0, result.output
    assert "best single hypothesis: fanout (floor within tolerance)" in result.output
    data = json.loads((out / "fit.json").read_text())
    assert data["table"][0]["match"]["lab"] == pytest.approx(300)
    assert data["hypotheses"][1]["key"] == "quiet" and data["hypotheses"][1]["explains"] == []


def test_fit_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from lab.cli import app
    from tests.conftest import single_error

    incident = tmp_path / "i.yaml"
    incident.write_text(
        "title: one floor\nfigures:\n  - id: floor\n    metric: elb.BackendConnectionErrors\n"
        '    value: "~300"\n    conditions: {phase: idle}\n    sources: [a sentence]\n'
    )
    line = single_error(CliRunner().invoke(app, ["fit", str(incident)]))
    assert line == f"Error: {incident}: no hypotheses listed; name scenarios (lab fit INCIDENT SCENARIO...)"
    line = single_error(CliRunner().invoke(app, ["fit", str(incident), "--from", str(tmp_path / "none")]))
    assert "none: no runs.json or results.json" in line
    line = single_error(CliRunner().invoke(app, ["fit", str(incident), "hc-fanout", "--sweep", "elb.nodes_per_az=99"]))
    assert "sweep point elb.nodes_per_az=99" in line


def test_estimates_solve_a_swept_axis_for_the_figure():
    f = figure(id="floor", periods=[60], conditions={"phase": "idle"})
    # 3 instances x 3 ELB nodes per ELB node count per AZ: 54/min at 1 per AZ, 324/min at 6
    runs = [run(3 * n, hypothesis="fanout", point=(f"elb.nodes_per_az={n}",)) for n in (1, 6)]
    (e,) = fit(Incident(title="floor", figures=[f]), runs)["estimates"]
    assert e["axis"] == "elb.nodes_per_az" and e["period"] == 60
    assert e["value"] == pytest.approx(1 + (300 - 54) / 54) and e["kind"] == "interpolated"
    far = figure(id="far", value="~3,000", periods=[60], conditions={"phase": "idle"})
    (e,) = fit(Incident(title="far", figures=[far]), runs)["estimates"]
    assert e["kind"] == "extrapolated" and e["value"] == pytest.approx(1 + (3000 - 54) / 54)
