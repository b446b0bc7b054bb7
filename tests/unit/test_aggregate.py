"""Repeated trials judged together: agreement counts, medians with spread, bootstrap intervals, expectations."""

from __future__ import annotations

import pytest

from lab.scenarios.aggregate import aggregate, agreement, format_spread, spread, status_note


def trial(repeat: int, o3: bool | None, floor: float, passed: bool = True, **extra) -> dict:
    return {
        "unit": f"x#{repeat}",
        "repeat": repeat,
        "runs": [],
        "error": None,
        "lab_limited": False,
        "limited_reasons": [],
        "expectations": [{"text": "errors > 0", "measured": floor, "passed": passed, "why": "a floor"}],
        "observations": {
            "O3": {"reproduced": o3, "figure": f"{floor:.0f}/min", "values": {"floor_per_min": floor, "requests": 0}},
            "O5": {"reproduced": None, "figure": "not a control scenario"},
        },
        **extra,
    }


def judged(trials: list[dict], planned: int | None = None) -> dict:
    entry = {"id": "x", "trials": trials, "planned": [f"x#{i}" for i in range(1, (planned or len(trials)) + 1)]}
    entry.update(aggregate(entry))
    return entry


def test_agreement_words():
    assert agreement([True] * 5) == {"verdict": "YES", "reproduced": True, "yes": 5, "counted": 5}
    assert agreement([False] * 5)["verdict"] == "no"
    assert agreement([True, False, True])["verdict"] == "FLAKY"
    assert agreement([True, False, True])["reproduced"] is None  # no single answer
    assert agreement([None, None])["verdict"] == "n/a"
    assert agreement([True, None])["verdict"] == "FLAKY"  # one trial could not speak to it: not unanimous
    assert agreement([])["verdict"] == "n/a"


def test_spread_min_max_and_no_interval_below_five():
    s = spread([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"], s["ci95"]) == (2.0, 1.0, 3.0, 3, None)


def test_bootstrap_interval_from_five_is_reproducible_and_holds_the_median():
    values = [50.0, 54.0, 52.0, 58.0, 49.0, 55.0]
    a, b = spread(values), spread(list(values))
    assert a["ci95"] == b["ci95"]  # seeded: the same trials, the same report
    lo, hi = a["ci95"]
    assert min(values) <= lo <= a["median"] <= hi <= max(values)
    assert spread([7.0] * 5)["ci95"] == [7.0, 7.0]


def test_format_spread_uses_the_unit_in_the_name():
    s = spread([50.0, 54.0, 58.0])
    assert format_spread("floor_per_min", s) == "54/min (50-58)"
    assert format_spread("three.floor_per_min", s) == "54/min (50-58)"
    assert format_spread("ratio", spread([2.9, 3.0, 3.1])) == "x3.00 (2.90-3.10)"
    assert format_spread("success_share", spread([0.1, 0.12, 0.08])) == "10% (8-12)"
    assert format_spread("p99_ms", spread([250.0])) == "250 ms"
    assert format_spread("ratio", spread([2.991, 2.994])) == "x2.99"  # a spread too small to print is none
    five = format_spread("floor_per_min", spread([50.0, 54.0, 52.0, 58.0, 49.0]))
    assert five.startswith("52/min (49-58; 95% CI ")


def test_unanimous_trials():
    e = judged([trial(i, True, 50 + i) for i in range(1, 4)])
    o3 = e["observations"]["O3"]
    assert (o3["verdict"], o3["yes"], o3["counted"]) == ("YES", 3, 3)
    assert o3["figure"] == "52/min (51-53)"  # the headline value: the first one the observation lists
    assert o3["values"]["requests"]["median"] == 0
    assert e["observations"]["O5"]["verdict"] == "n/a"
    assert e["status"] == "passed" and status_note(e) == "passed"
    exp = e["expectations"][0]
    assert (exp["passed"], exp["passed_runs"], exp["counted"], exp["measured"]) == (True, 3, 3, 52)


def test_disagreeing_trials_are_flaky_and_one_failed_run_fails_the_expectation():
    e = judged([trial(1, True, 12), trial(2, False, 4, passed=False), trial(3, True, 11)])
    o3 = e["observations"]["O3"]
    assert (o3["verdict"], o3["yes"], o3["counted"]) == ("FLAKY", 2, 3)
    assert [f["figure"] for f in o3["figures"]] == ["12/min", "4/min", "11/min"]
    exp = e["expectations"][0]
    assert not exp["passed"] and (exp["passed_runs"], exp["counted"]) == (2, 3)
    assert exp["measured_all"] == [12, 4, 11]
    assert e["status"] == "failed"


def test_a_single_trial_keeps_its_own_words():
    o3 = judged([trial(1, False, 4)])["observations"]["O3"]
    assert (o3["verdict"], o3["figure"]) == ("no", "4/min")


def test_lab_limited_trials_do_not_vote():
    limited = trial(2, False, 1, passed=False, lab_limited=True, limited_reasons=["CPU 99% (machine)"])
    e = judged([trial(1, True, 50), limited, trial(3, True, 52)])
    assert (e["observations"]["O3"]["verdict"], e["observations"]["O3"]["counted"]) == ("YES", 2)
    assert [f["repeat"] for f in e["observations"]["O3"]["figures"]] == [1, 3]  # repeat 2 did not vote
    assert e["expectations"][0]["passed"] and e["status"] == "passed"
    assert status_note(e) == "passed (1 lab-limited, not counted)"
    only_limited = judged([{**limited, "unit": "x#1", "repeat": 1}])
    assert only_limited["status"] == "lab-limited" and only_limited["observations"]["O3"]["verdict"] == "n/a"


def test_an_errored_trial_does_not_vote_and_marks_the_entry():
    e = judged([trial(1, True, 50), trial(2, None, 0, error="lab up failed: no such device")])
    assert e["observations"]["O3"]["counted"] == 1
    assert e["status"] == "error" and e["error"] == "repeat 2: lab up failed: no such device"


def test_missing_trials_keep_an_entry_from_passing():
    e = judged([trial(1, True, 50)], planned=3)
    assert e["missing"] == ["x#2", "x#3"] and e["status"] == "incomplete"
    assert status_note(e) == "incomplete (2 missing)"


@pytest.mark.parametrize("bad", [float("nan"), "12", None])
def test_values_that_are_not_numbers_are_left_out(bad):
    t = trial(1, True, 50)
    t["observations"]["O3"]["values"]["odd"] = bad
    values = judged([t])["observations"]["O3"]["values"]
    assert "odd" not in values
