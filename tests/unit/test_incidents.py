"""Incident files and CloudWatch imports: the model, the seed's file, AWS CLI-shaped exports, `lab incident`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.incidents import cloudwatch
from lab.incidents.files import load_incident
from lab.models.incident import parse_figure_value
from lab.models.schemas import SCHEMAS
from tests.conftest import REPO, single_error

FIXTURES = REPO / "tests" / "fixtures" / "cloudwatch"
SEED = REPO / "incidents" / "seed-2017.yaml"
runner = CliRunner()


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- the model and the seed's file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "tol"),
    [
        ("~300", 300, 0.15),
        ("~1,000", 1000, 0.15),
        ("~15k", 15000, 0.15),
        ("~11K", 11000, 0.15),
        ("~10%", 0.1, 0.15),
        ("42", 42, None),
    ],
)
def test_figure_values_as_the_post_writes_them(text, value, tol):
    got, got_tol = parse_figure_value(text)
    assert got == pytest.approx(value) and got_tol == tol


def test_the_seed_file_holds_every_observation_with_its_sentence():
    inc = load_incident(SEED)
    by_obs = {}
    for f in inc.figures:
        by_obs.setdefault(f.observation, []).append(f)
        assert all(len(s) > 30 for s in f.sources)
    assert sorted(by_obs) == ["O1", "O2", "O3", "O4", "O5"]
    seed_text = (REPO.parent.parent / "shared" / "seed").glob("*.txt")
    text = " ".join(" ".join(p.read_text().split()) for p in seed_text)
    if text:  # the quotes are the post's own words (whitespace aside)
        for f in inc.figures:
            for s in f.sources:
                assert " ".join(s.split()).replace("’", "'") in text.replace("’", "'"), s
    floor = {f.id: f for f in inc.figures}
    assert floor["idle-floor-3"].target == 300 and floor["idle-floor-9"].target == 1000
    assert floor["idle-floor-3"].periods == [60, 300]  # the post names no period: both are tried


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "i.yaml"
    p.write_text(text)
    return p


BASE = """\
title: test incident
figures:
  - id: a
    metric: elb.BackendConnectionErrors
    value: "~300"
    conditions: {phase: idle}
    sources: [the post]
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("metric: elb.BackendConnectionErrors", "metric: elb.Nope"),
            "i.yaml:4: figures[0].metric: unknown figure metric 'elb.Nope'",
        ),
        (('value: "~300"', 'value: "about 300"'), "i.yaml:5: figures[0].value: expected a number such as 300"),
        (('value: "~300"', "value: .nan"), "i.yaml:5: figures[0].value: not a finite number"),
        (
            ("    conditions", "    statistic: Average\n    periods: [60, 120]\n    conditions"),
            "figures[0].periods[1]: Input should be 60 or 300",
        ),
        (('value: "~300"', "at_least: 5\n    at_most: 1"), "figures[0].at_least: must not exceed at_most"),
        (("sources: [the post]", "sources: []"), "figures[0].sources: List should have at least 1 item"),
        (
            ("{phase: idle}", "{phase: busy}"),
            "figures[0].conditions.phase: Input should be 'idle', 'load' or 'after-load'",
        ),
        (
            ("metric: elb.BackendConnectionErrors", "metric: elb.backend_success_share"),
            "figures[0].statistic: Sum does not apply to elb.backend_success_share; use Average",
        ),
    ],
)
def test_bad_figures_are_one_line_with_file_line_and_field(tmp_path, change, expected):
    path = write(tmp_path, BASE.replace(*change))
    with pytest.raises(InputError) as exc:
        load_incident(path)
    assert expected in str(exc.value)
    assert str(exc.value).startswith(str(path))


def test_figures_of_one_graph_need_a_common_period(tmp_path):
    text = BASE.replace("    conditions", "    graph: g\n    periods: [60]\n    conditions")
    text += (
        BASE.split("figures:\n")[1]
        .replace("id: a", "id: b")
        .replace("    conditions", "    graph: g\n    periods: [300]\n    conditions")
    )
    with pytest.raises(InputError, match="figures\\[1\\].periods: no period in common with graph 'g'"):
        load_incident(write(tmp_path, text))


def test_incident_schema_is_published_with_every_number_bounded():
    schema = SCHEMAS["incident"]()
    assert schema["title"] == "lab incident"
    assert "figures" in schema["properties"]

    def numbers(node, where=""):
        if isinstance(node, dict):
            if node.get("type") in ("number", "integer"):
                yield where, node
            for k, v in node.items():
                yield from numbers(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from numbers(v, f"{where}/{i}")

    found = list(numbers(schema))
    assert len(found) >= 8
    assert [w for w, n in found if "minimum" not in n or "maximum" not in n] == []


# --- CloudWatch exports, as the AWS CLI prints them -----------------------------------------------------


def read(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_get_metric_statistics_unordered_datapoints_come_out_oldest_first_with_gaps():
    s = cloudwatch.read_export([read("get-metric-statistics-sum-60.json")], "x.json")
    assert s.label == "BackendConnectionErrors" and s.statistic == "Sum" and s.unit == "Count"
    assert [p[0] for p in s.points] == [
        t("2017-06-01T12:00"),
        t("2017-06-01T12:01"),
        t("2017-06-01T12:03"),
        t("2017-06-01T12:04"),
        t("2017-06-01T12:05"),
    ]
    assert [p[1] for p in s.points] == [324, 318, 972, 978, 966]
    assert s.period == 60 and s.missing(60) == 1  # 12:02 has no datapoint


def test_get_metric_statistics_with_several_statistics_needs_a_choice():
    text = read("get-metric-statistics-multi-300.json")
    with pytest.raises(InputError, match="the datapoints hold Average, Maximum, Sum; choose one with --statistic"):
        cloudwatch.read_export([text], "x.json")
    s = cloudwatch.read_export([text], "x.json", statistic="Maximum")
    assert s.period == 300 and [p[1] for p in s.points] == [901, 899, 912]  # Z timestamps, sorted
    with pytest.raises(InputError, match="no SampleCount"):
        cloudwatch.read_export([text], "x.json", statistic="SampleCount")


def test_get_metric_data_pages_newest_first_merge_into_one_series():
    s = cloudwatch.read_export([read("get-metric-data-page1.json"), read("get-metric-data-page2.json")], "p.json")
    assert s.points[0] == (t("2017-06-01T12:00"), 0.0) and s.points[-1] == (t("2017-06-01T12:09"), 0.0)
    assert len(s.points) == 9 and s.missing(60) == 1  # 12:06 is absent, as get-metric-data leaves it
    assert s.warnings == []  # the second page completed it


def test_get_metric_data_partial_data_alone_warns():
    s = cloudwatch.read_export([read("get-metric-data-page1.json")], "p.json")
    assert s.warnings == ["StatusCode PartialData: more pages (NextToken) hold the rest; pass every page"]


def test_get_metric_data_with_two_results_needs_an_id():
    text = read("get-metric-data-two-ids.json")
    with pytest.raises(InputError, match="several results \\(errors, requests\\); choose one with --id"):
        cloudwatch.read_export([text], "d.json")
    s = cloudwatch.read_export([text], "d.json", result_id="errors")
    assert s.period == 300 and [p[1] for p in s.points] == [11110, 10980, 11040]
    with pytest.raises(InputError, match="no result with Id 'nope'"):
        cloudwatch.read_export([text], "d.json", result_id="nope")


def test_csv_documented_format():
    s = cloudwatch.read_export([read("errors.csv")], "e.csv")
    assert s.unit == "Count" and [p[1] for p in s.points] == [324, 330, 318] and s.missing(60) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("time,value\n2017-06-01T12:00:00Z,1\n", "e.csv:1: header must be timestamp,value"),
        ("timestamp,value\n2017-06-01T12:00:00,1\n", "e.csv:2: timestamp '2017-06-01T12:00:00' has no time zone"),
        ("timestamp,value\n2017-06-01T12:00:00Z,nan\n", "e.csv:2: 'nan' is not a finite number"),
        (
            "timestamp,value\n2017-06-01T12:00:00Z,1\n2017-06-01T12:00:00Z,2\n",
            "two points at 2017-06-01T12:00:00+00:00",
        ),
        ("timestamp,value\nyesterday,1\n", "e.csv:2: timestamp 'yesterday' is not ISO-8601"),
    ],
)
def test_bad_csv_is_one_clear_error(text, expected):
    with pytest.raises(InputError, match=None) as exc:
        cloudwatch.read_export([text], "e.csv")
    assert expected in str(exc.value)


def test_json_that_is_not_a_cloudwatch_export():
    with pytest.raises(InputError, match="no Datapoints list"):
        cloudwatch.read_export(['{"Items": []}'], "x.json")
    with pytest.raises(InputError, match="x.json:1: not JSON"):
        cloudwatch.read_export(["{nope"], "x.json")
    bad = json.loads(read("get-metric-data-two-ids.json"))
    bad["MetricDataResults"][0]["Values"].pop()
    with pytest.raises(InputError, match="has 3 Timestamps but 2 Values"):
        cloudwatch.read_export([json.dumps(bad)], "x.json", result_id="errors")


# --- the CLI ------------------------------------------------------------------------------------------


def test_import_writes_a_valid_incident_and_adds_to_it(tmp_path):
    out = tmp_path / "inc.yaml"
    args = [
        "incident",
        "import",
        str(FIXTURES / "get-metric-statistics-sum-60.json"),
        "--metric",
        "elb.BackendConnectionErrors",
        "--phase",
        "idle",
        "--instances",
        "3",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "5 points, Sum per 60 s" in result.output
    inc = load_incident(out)
    fig = inc.figures[0]
    assert fig.periods == [60] and [p.v for p in fig.series] == [324, 318, 972, 978, 966]
    assert fig.conditions.instances == 3 and "periods without data: 1" in fig.note and "unit Count" in fig.note
    again = runner.invoke(app, [*args[:-2], "--figure", "second", "-o", str(out)])
    assert again.exit_code == 0, again.output
    assert [f.id for f in load_incident(out).figures] == ["imported", "second"]
    assert "already has a figure 'imported'" in single_error(runner.invoke(app, args))


def test_import_errors_are_one_line(tmp_path):
    out = tmp_path / "inc.yaml"
    fixture = str(FIXTURES / "get-metric-statistics-sum-60.json")
    line = single_error(runner.invoke(app, ["incident", "import", fixture, "--metric", "elb.Nope", "-o", str(out)]))
    assert "--metric elb.Nope: unknown figure metric" in line
    line = single_error(
        runner.invoke(
            app, ["incident", "import", fixture, "--metric", "elb.RequestCount", "--period", "300", "-o", str(out)]
        )
    )
    assert line == "Error: --period 300: the export's points are 60 s apart"
    line = single_error(
        runner.invoke(
            app, ["incident", "import", str(tmp_path / "missing.json"), "--metric", "elb.RequestCount", "-o", str(out)]
        )
    )
    assert "missing.json: cannot read" in line
    line = single_error(
        runner.invoke(
            app, ["incident", "import", fixture, "--metric", "elb.RequestCount", "--phase", "busy", "-o", str(out)]
        )
    )
    assert line == "Error: --phase busy: Input should be 'idle', 'load' or 'after-load'"
    assert not out.exists()


def test_validate_cli():
    result = runner.invoke(app, ["incident", "validate", str(SEED)])
    assert result.exit_code == 0 and "ok (7 figures, 3 hypotheses)" in result.output
    assert runner.invoke(app, ["schema", "incident"]).exit_code == 0
