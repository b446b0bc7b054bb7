"""Scenarios without running them: validation with file:line errors, statistics, observations, reports."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.load.stats import encode, new_histogram, record
from lab.models.scenario import OBSERVATIONS
from lab.scenarios import report
from lab.scenarios.aggregate import aggregate
from lab.scenarios.evaluate import check_expectation, observations
from lab.scenarios.loader import builtin, load_scenario
from lab.scenarios.metrics import CATALOG, latency_bands, statistic

MINIMAL = """\
title: minimal
hypothesis: a hypothesis long enough to pass
topology: {file: default.yaml}
phases:
  - {name: idle, kind: idle, duration: 10s}
  - name: steady
    kind: steady
    duration: 10s
    load: {service: accounts, rate: 10}
    faults:
      - {kind: link, target: node-a1, params: {loss: 1%}, at: 2s}
expect:
  - {metric: elb.BackendConnectionErrors, phase: idle, op: "==", value: 0}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as exc:
        load_scenario(write(tmp_path, text))
    assert "\n" not in str(exc.value)
    return str(exc.value)


def line_with(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


@pytest.mark.parametrize("path", builtin(), ids=lambda p: p.stem)
def test_every_builtin_scenario_validates(path):
    loaded = load_scenario(path)
    assert loaded.scenario.hypothesis and loaded.scenario.signature
    assert loaded.scenario.expect, "a scenario without expectations proves nothing"


def test_the_builtins_cover_the_issue_list():
    names = {p.stem for p in builtin()}
    assert {
        "baseline",
        "conntrack-exhaustion",
        "hc-fanout",
        "hc-misroute",
        "cross-az",
        "conntrack-invalid",
        "elb-idle-timeout",
        "syn-backlog",
    } <= names


def test_minimal_scenario_loads(tmp_path):
    loaded = load_scenario(write(tmp_path, MINIMAL))
    assert loaded.scenario.variant_names() == ["default"]
    assert loaded.topology_path.name == "default.yaml"


def test_unknown_field_names_field_and_line(tmp_path):
    text = MINIMAL.replace(
        "  - {name: idle, kind: idle, duration: 10s}", "  - {name: idle, kind: idle, duration: 10s, lenght: 3}"
    )
    path = tmp_path / "s.yaml"
    message = error_of(tmp_path, text)
    assert message == f"{path}:{line_with(path, 'lenght')}: unknown field 'phases[0].lenght'; check the spelling"


def test_unknown_fault_kind_is_rejected_before_anything_runs(tmp_path):
    path = tmp_path / "s.yaml"
    message = error_of(tmp_path, MINIMAL.replace("kind: link", "kind: meteor"))
    assert message.startswith(f"{path}:{line_with(path, 'meteor')}: phases[1].faults[0]")
    assert "meteor" in message and "conntrack-exhaustion" in message  # lists the kinds


def test_unknown_fault_target_is_rejected(tmp_path):
    message = error_of(tmp_path, MINIMAL.replace("target: node-a1", "target: node-z9"))
    assert "unknown target 'node-z9'" in message


def test_bad_fault_parameter_is_rejected(tmp_path):
    assert "loss" in error_of(tmp_path, MINIMAL.replace("loss: 1%", "loss: 300%"))


def test_unknown_metric_is_rejected_with_a_hint(tmp_path):
    path = tmp_path / "s.yaml"
    message = error_of(tmp_path, MINIMAL.replace("elb.BackendConnectionErrors", "elb.BackendErrors"))
    assert message.startswith(f"{path}:{line_with(path, 'BackendErrors')}: unknown metric 'elb.BackendErrors'")


def test_stat_must_fit_the_metric(tmp_path):
    text = MINIMAL.replace('phase: idle, op: "=="', 'phase: idle, stat: max, op: "=="')
    assert "stat 'max' does not apply to counter" in error_of(tmp_path, text)


def test_expectation_on_unknown_phase(tmp_path):
    assert "unknown phase 'warmup'" in error_of(tmp_path, MINIMAL.replace("phase: idle, op", "phase: warmup, op"))


def test_unknown_service_in_a_workload(tmp_path):
    assert "unknown service 'billing'" in error_of(tmp_path, MINIMAL.replace("service: accounts", "service: billing"))


def test_fault_outside_its_phase(tmp_path):
    assert "not inside the 10s phase" in error_of(tmp_path, MINIMAL.replace("at: 2s", "at: 20s"))


def test_idle_phase_with_load_is_rejected(tmp_path):
    text = MINIMAL.replace(
        "{name: idle, kind: idle, duration: 10s}",
        "{name: idle, kind: idle, duration: 10s, load: {service: accounts, rate: 1}}",
    )
    assert "an idle phase has no workload" in error_of(tmp_path, text)


def test_bad_variant_override_names_the_variant(tmp_path):
    text = MINIMAL + "variants:\n  a: [nodes_per_az=1]\n  b: [elb.nodes_per_az=99]\n"
    message = error_of(tmp_path, text)
    assert "variant 'b'" in message and "nodes_per_az" in message


def test_validate_cli_is_one_line_on_error(tmp_path):
    path = write(tmp_path, MINIMAL.replace("kind: link", "kind: meteor"))
    result = CliRunner().invoke(app, ["scenario", "validate", str(path)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    ok = CliRunner().invoke(app, ["scenario", "validate", "baseline"])
    assert ok.exit_code == 0 and "ok" in ok.output


def test_run_cli_quick_and_time_scale_are_one_or_the_other():
    result = CliRunner().invoke(app, ["scenario", "run", "baseline", "--quick", "--time-scale", "0.5"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: --quick and --time-scale: choose one (--quick uses the scenario's quick time scale)"
    ]


# --- statistics and observations on synthetic runs -----------------------------------------------------------


def interval(t: float, errors: int, requests: int = 0, client: dict | None = None, span: float = 1.0) -> dict:
    return {
        "t_start": t,
        "t_end": t + span,
        "elb": {
            "metrics": {
                "BackendConnectionErrors": {"all": errors},
                "RequestCount": {"all": requests},
                "UnHealthyHostCount": {"all": 0},
            },
            "backend_connection_errors": {"health_check": errors, "traffic": 0},
        },
        "nodes": {},
        "client": client,
    }


def run(variant: str, instances: int, floor: int, scale: float = 0.1, after: int = 40) -> dict:
    # idle 0-10 s at `floor` errors per second, steady 10-20 s, recovery 20 s to 20 + `after`
    intervals = [interval(t, floor) for t in range(20 + after)]
    return {
        "variant": variant,
        "instances": instances,
        "phases": [
            {"name": "idle", "kind": "idle", "t_start": 0, "t_end": 10, "faults": []},
            {
                "name": "steady",
                "kind": "steady",
                "t_start": 10,
                "t_end": 20,
                "faults": [],
                "load": {"requests": 100, "ok_ratio": 1.0, "outcomes": {"ok": 100}, "histograms_ms": {}},
            },
            {"name": "after", "kind": "recovery", "t_start": 20, "t_end": 20 + after, "faults": []},
        ],
        "intervals": intervals,
    }


def test_per_minute_is_per_elb_minute_under_a_time_scale():
    metric = CATALOG["elb.BackendConnectionErrors"]
    intervals = [interval(t, 3) for t in range(10)]
    # 3 errors per wall second; at scale 0.1 a wall second is 10 ELB seconds: 18 per ELB minute
    assert statistic(metric, "per_minute", intervals, 0, 10, time_scale=0.1) == pytest.approx(18)
    assert statistic(metric, "per_minute", intervals, 0, 10, time_scale=1.0) == pytest.approx(180)
    assert statistic(metric, "sum", intervals, 0, 10) == 30
    assert statistic(metric, "per_minute", intervals, 100, 110) is None  # no data is not zero


def test_syn_retransmit_shares_come_from_the_latency_histogram():
    h = new_histogram()
    for seconds in [0.002] * 90 + [1.003] * 6 + [1.6] + [3.004] * 2:  # 99 calls answered
        record(h, seconds)
    load = {"requests": 100, "ok_ratio": 0.99, "outcomes": {"ok": 99, "read-timeout": 1}, "hdr": {"latency": encode(h)}}
    bands = latency_bands(load)
    assert bands == {"[0 s, 1 s)": 90, "[1 s, 1.5 s)": 6, "[1.5 s, 3 s)": 1, "[3 s, 3.5 s)": 2, ">= 3.5 s": 0}
    # the runner keeps the bands, not the histogram: the shares read the same from either
    for kept in (load, {**{k: v for k, v in load.items() if k != "hdr"}, "latency_bands": bands}):
        assert statistic(CATALOG["client.latency_1s_share"], "value", [], 0, 1, load=kept) == pytest.approx(0.06)
        assert statistic(CATALOG["client.latency_3s_share"], "value", [], 0, 1, load=kept) == pytest.approx(0.02)
    assert statistic(CATALOG["client.latency_1s_share"], "value", [], 0, 1, load={"requests": 0}) is None


def test_the_report_shows_a_latency_histogram_with_delays():
    scenario = {"trials": [{"repeat": 1, "runs": [{"variant": "legacy", "phases": [
        {"name": "idle", "load": None},
        {"name": "quiet", "load": {"latency_bands": {"[0 s, 1 s)": 10, "[1 s, 1.5 s)": 0}}},
        {"name": "narrowed", "load": {"latency_bands": {"[0 s, 1 s)": 90, "[1 s, 1.5 s)": 7}}},
    ]}]}]}  # fmt: skip
    assert report.details(scenario) == [
        (0, "latency histogram (legacy narrowed, repeat 1): [0 s, 1 s) 90, [1 s, 1.5 s) 7"),
    ]


def test_an_interval_straddling_a_phase_boundary_is_left_out():
    # idle ends at 6.0; the interval 5.3-6.3 holds errors of the next phase's fault (applied at 6.1)
    metric = CATALOG["elb.BackendConnectionErrors"]
    intervals = [interval(t + 0.3, 0) for t in range(5)] + [interval(5.3, 4), interval(6.3, 50)]
    assert statistic(metric, "sum", intervals, 0.0, 6.0) == 0
    assert statistic(metric, "sum", intervals, 6.0, 7.5) == 50


def test_o1_needs_two_sizes_and_proportional_floors():
    obs = observations([run("three", 3, 3), run("nine", 9, 9)], 0.1, [])
    assert obs["O1"]["reproduced"] is True and "x3.00" in obs["O1"]["figure"]
    assert observations([run("three", 3, 3), run("nine", 9, 4)], 0.1, [])["O1"]["reproduced"] is False
    assert observations([run("one", 3, 3)], 0.1, [])["O1"]["reproduced"] is None
    assert observations([run("one", 3, 0)], 0.1, [])["O1"]["reproduced"] is False


def test_o3_floor_after_load_and_o5_only_for_controls():
    obs = observations([run("x", 3, 2)], 0.1, ["O5"])
    assert obs["O3"]["reproduced"] is True
    assert obs["O5"]["reproduced"] is False  # errors everywhere: not a healthy ELB
    assert observations([run("x", 3, 0)], 0.1, ["O5"])["O5"]["reproduced"] is True
    assert observations([run("x", 3, 0)], 0.1, [])["O5"]["reproduced"] is None


def test_o3_judges_what_remains_after_the_loads_conntrack_entries_expire():
    # At x0.1 the entries' 300 s are 30 wall seconds: errors that stop within them are the load's tail.
    tail = run("x", 3, 2)
    tail["intervals"] = [i for i in tail["intervals"] if i["t_start"] < 45]
    tail["intervals"] += [interval(t, 0) for t in range(45, 60)]
    o3 = observations([tail], 0.1, [])["O3"]
    assert o3["reproduced"] is False and "down from" in o3["figure"]
    # Errors that go on at the same rate past them are a floor.
    assert observations([run("x", 3, 2)], 0.1, [])["O3"]["reproduced"] is True


def test_o3_needs_errors_that_recur_not_one_or_two_failed_connects():
    # Recovery 20-60 s at x0.1 is judged from 50 s: 10 stretches of 10 ELB seconds (1 s each).
    blip = run("x", 3, 0)
    blip["intervals"] = [interval(t, 2 if t in (52, 57) else 0) for t in range(60)]
    o3 = observations([blip], 0.1, [])["O3"]
    assert o3["reproduced"] is False and "in 2 of 10 10-second stretches only" in o3["figure"]
    steady = run("x", 3, 0)
    steady["intervals"] = [interval(t, 2 if t % 2 else 0) for t in range(60)]  # every other stretch: a floor
    assert observations([steady], 0.1, [])["O3"]["reproduced"] is True


def test_o3_names_what_held_the_node_tables_when_a_floor_stays():
    held = run("x", 3, 2)
    held["phases"][-1]["conntrack"] = {
        "node-a1": {"entries": 150, "assured": 150, "by_state": {"TIME_WAIT": 150}, "longest_s": 11,
                    "longest_state": "TIME_WAIT"},
        "node-b1": {"entries": 0, "assured": 0, "by_state": {}, "longest_s": 0, "longest_state": ""},
    }  # fmt: skip
    figure = observations([held], 0.1, [])["O3"]["figure"]
    assert "node-a1 150 (150 ASSURED; TIME_WAIT 150; longest 11 s TIME_WAIT)" in figure and "node-b1" not in figure
    held["phases"][-1]["conntrack"] = {"node-a1": {"entries": 0}}
    assert "node tables empty at its end" in observations([held], 0.1, [])["O3"]["figure"]


def test_o3_says_when_the_phase_is_too_short_to_judge():
    short = observations([run("x", 3, 2, after=20)], 0.1, [])["O3"]  # 200 ELB s < 300 s + 60 s
    assert short["reproduced"] is None and "too short" in short["figure"]
    assert observations([run("x", 3, 0, after=20)], 0.1, [])["O3"]["reproduced"] is False  # no errors at all


def test_o3_is_the_same_rule_at_full_scale():
    full = run("x", 3, 2, scale=1.0)
    for p in full["phases"]:  # the same run in ELB seconds: x10
        p["t_start"], p["t_end"] = p["t_start"] * 10, p["t_end"] * 10
    full["intervals"] = [interval(t * 10, 20, span=10) for t in range(60)]
    assert observations([full], 1.0, [])["O3"]["reproduced"] is True
    full["intervals"] = [i for i in full["intervals"] if i["t_start"] < 450] + [
        interval(t * 10, 0, span=10) for t in range(45, 60)
    ]
    assert observations([full], 1.0, [])["O3"]["reproduced"] is False


def test_every_observation_gives_its_numbers_headline_first():
    runs = [run("three", 3, 3), run("nine", 9, 9)]
    obs = observations(runs, 0.1, ["O5"])
    assert list(obs["O1"]["values"]) == ["ratio", "three.floor_per_min", "nine.floor_per_min"]
    assert obs["O1"]["values"]["ratio"] == pytest.approx(3.0)
    assert obs["O1"]["values"]["three.floor_per_min"] == pytest.approx(18)  # 3/s at scale 0.1: 18 per ELB min
    assert list(obs["O3"]["values"])[0] == "three.floor_per_min"
    assert obs["O4"]["values"] == {"timeout_ratio": 0.0, "p99_ms": 0.0}
    assert obs["O5"]["values"]["errors_per_min"] == pytest.approx(36)  # (3 + 9)/s over 2 x 5 ELB minutes
    single = observations([run("x", 3, 2)], 0.1, [])
    assert list(single["O3"]["values"]) == ["floor_per_min", "early_per_min", "requests"]
    assert single["O1"]["values"] == {"floor_per_min": pytest.approx(12)}


def test_ratio_expectation_across_variants(tmp_path):
    text = MINIMAL + (
        "  - metric: elb.BackendConnectionErrors\n"
        "    phase: idle\n"
        "    variant: nine\n"
        "    of: {metric: elb.BackendConnectionErrors, phase: idle, variant: three}\n"
        "    between: [2.5, 3.5]\n"
        "variants:\n  three: [nodes_per_az=1]\n  nine: [nodes_per_az=3]\n"
    )
    scenario = load_scenario(write(tmp_path, text)).scenario
    runs = {"three": run("three", 3, 3), "nine": run("nine", 9, 9)}
    verdict = check_expectation(scenario.expect[-1], runs, 0.1)[0]
    assert verdict["passed"] and verdict["measured"] == pytest.approx(3.0)
    runs["nine"] = run("nine", 9, 5)
    assert not check_expectation(scenario.expect[-1], runs, 0.1)[0]["passed"]


# --- reports ---------------------------------------------------------------------------------------------------


def trial(unit: str, expectations: list[dict], observations: dict, **extra) -> dict:
    return {
        "unit": unit,
        "repeat": int(unit.rsplit("#", 1)[1]),
        "runs": [],
        "expectations": expectations,
        "observations": observations,
        "error": None,
        "lab_limited": False,
        "limited_reasons": [],
        **extra,
    }


def entry(sid: str, trials: list[dict], **extra) -> dict:
    e = {"id": sid, "title": sid, "hypothesis": "h", "signature": "s", "seconds": 5, "plots": [], "trials": trials}
    e["planned"] = [t["unit"] for t in trials]
    e.update(extra)
    e.update(aggregate(e))
    return e


def results() -> dict:
    fanout = [
        trial(
            "hc-fanout#1",
            [{"text": "a > 0", "measured": 54.0, "passed": True, "why": ""}],
            {"O1": {"reproduced": True, "figure": "54/min", "values": {"floor_per_min": 54.0}}},
        )
    ]
    broken = [trial("broken#1", [{"text": "b < 1", "measured": 3.0, "passed": False, "why": "because"}], {})]
    return {
        "seconds": 12.5,
        "time_scale": 0.1,
        "quick": True,
        "repeat": 1,
        "scenarios": [entry("hc-fanout", fanout), entry("broken", broken)],
    }


def test_reports_are_written_and_well_formed(tmp_path):
    files = report.write_all(results(), tmp_path)
    assert set(files) == {"results.json", "report.md", "report.html", "junit.xml"}
    assert json.loads(files["results.json"].read_text())["scenarios"][0]["id"] == "hc-fanout"
    md = files["report.md"].read_text()
    assert "| hc-fanout | YES 1/1 54/min | - |" in md and "1 s initial RTO (SYN retransmits)" in md
    suites = ET.parse(files["junit.xml"]).getroot()
    assert suites.tag == "testsuites"
    broken = next(s for s in suites if s.get("name") == "broken")
    assert broken.get("failures") == "1"
    failure = broken.find("testcase/failure")
    assert failure.get("message") == "passed in 0/1 counted runs (measured 3)"
    assert "<table>" in files["report.html"].read_text()
    assert len(report.table_rows(results())[0]) == len(OBSERVATIONS) + 2


def test_reports_say_which_trials_did_not_count(tmp_path):
    obs = {"O3": {"reproduced": True, "figure": "50/min", "values": {"floor_per_min": 50.0}}}
    ok = [{"text": "a > 0", "measured": 50.0, "passed": True, "why": ""}]
    limited = trial("x#2", ok, obs, lab_limited=True, limited_reasons=["default: machine CPU 98% for 12 s"])
    errored = trial("x#3", [], {}, error="lab up failed")
    results = {"repeat": 3, "scenarios": [entry("x", [trial("x#1", ok, obs), limited, errored])]}
    files = report.write_all(results, tmp_path)
    md = files["report.md"].read_text()
    assert "| x | - | - | YES 1/1 50/min | - | - | error (1 lab-limited, not counted; 1 errored) |" in md
    assert "- repeat 2 lab-limited (not counted): default: machine CPU 98% for 12 s" in md
    assert "- repeat 3 errored (not counted): lab up failed" in md
    assert "repeat 2 lab-limited (not counted)" in files["report.html"].read_text()


def test_repeats_are_drawn_overlaid_per_variant(tmp_path):
    from lab.scenarios.plots import entry_plots

    for r, errors in ((1, 3), (2, 5)):
        lines = [{"type": "run", "interval_s": 1}] + [{"type": "interval", **interval(t, errors)} for t in range(10)]
        (tmp_path / f"x-default-r{r}.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    runs = [[{"variant": "default", "journal": f"x-default-r{r}.jsonl"}] for r in (1, 2)]
    trials = [trial(f"x#{r}", [], {}, runs=runs[r - 1], plots=[f"x-default-r{r}.png"]) for r in (1, 2)]
    assert entry_plots({"id": "x", "trials": trials}, tmp_path) == ["x-default-repeats.png"]
    assert (tmp_path / "x-default-repeats.png").read_bytes().startswith(b"\x89PNG")
    assert entry_plots({"id": "x", "trials": trials[:1]}, tmp_path) == ["x-default-r1.png"]  # one trial: its own
    (tmp_path / "x-default-r2.jsonl").unlink()
    (tmp_path / "x-default-r1.jsonl").unlink()
    assert entry_plots({"id": "y", "trials": trials}, tmp_path) == []  # no journal left: no plot claimed


def test_problems_say_what_keeps_the_matrix_from_answering():
    assert report.problems(results()) == [("FAILED", "broken: b < 1 (passed in 0/1 counted runs; measured 3)")]
    assert not report.answered(results())
    clean = results()
    clean["scenarios"] = clean["scenarios"][:1]
    assert report.problems(clean) == [] and report.answered(clean)
    clean["missing_shards"], clean["shard"] = [2], {"index": 0, "count": 2, "units": []}
    assert report.problems(clean) == [("MISSING", "Missing shards: 2/2")] and not report.answered(clean)


def test_sigterm_stops_every_repeat_not_only_the_running_one(tmp_path, monkeypatch):
    from lab import lifecycle
    from lab.errors import LabError
    from lab.scenarios import runner

    loaded = load_scenario(next(p for p in builtin() if p.stem == "baseline"))
    opts = runner.RunOptions(report_dir=tmp_path)
    calls = []

    def variant(*_args, **_kw):
        calls.append(1)
        raise lifecycle.Interrupted("interrupted by SIGTERM")

    monkeypatch.setattr(runner, "_run_variant", variant)
    with pytest.raises(lifecycle.Interrupted):
        runner.run_scenario(loaded, opts, repeats=3)
    assert calls == [1]  # the second and third repeats never started
    # A lab that fails is that trial's error; the next repeat still runs.
    monkeypatch.setattr(runner, "_run_variant", lambda *_a, **_k: (_ for _ in ()).throw(LabError("no room")))
    entry = runner.run_scenario(loaded, opts, repeats=2)
    assert [t["error"] for t in entry["trials"]] == ["no room", "no room"]
