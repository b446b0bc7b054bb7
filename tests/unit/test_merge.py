"""Shards of a matrix: a stable split, and their merge into the unsharded report (or a refusal, or what is missing).

The matrix here is the real one (built-in scenarios loaded and hashed, plan, shard, reports) with each
trial's lab run replaced by a synthetic result: a lab needs root and minutes, which this tier has not.
The real thing runs in the README's check (`lab matrix ... --shard` then `lab report merge`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
from jsonschema import Draft7Validator
from ruamel.yaml import YAML
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.scenarios import matrix, report
from lab.scenarios.matrix import Shard
from lab.scenarios.merge import check_parts, merge, merge_reports, read_part
from tests.conftest import REPO, single_error

SCENARIOS = ["baseline", "hc-fanout", "hc-misroute"]


def fake_trial(loaded, opts, repeat, progress=lambda _m: None) -> dict:
    """A trial as run_trial returns it, its numbers drawn from its unit id (the same unit, the same trial)."""
    unit = f"{loaded.id}{opts.label}#{repeat}"
    seed = zlib.crc32(unit.encode())
    floor = 40 + seed % 20
    return {
        "unit": unit,
        "repeat": repeat,
        "runs": [],
        "status": "passed",
        "error": None,
        "lab_limited": False,
        "limited_reasons": [],
        "seconds": 1.0,
        "plots": [],
        "expectations": [{"text": "errors > 0", "measured": float(floor), "passed": True, "why": ""}],
        "observations": {
            "O1": {"reproduced": True, "figure": f"{floor}/min", "values": {"floor_per_min": float(floor)}},
            # hc-fanout's second repeat disagrees: the merge must keep the disagreement
            "O3": {
                "reproduced": (loaded.id, repeat) != ("hc-fanout", 2),
                "figure": "floor",
                "values": {"floor_per_min": float(seed % 7)},
            },
        },
    }


@pytest.fixture
def fake_matrix(monkeypatch):
    monkeypatch.setattr(matrix, "run_trial", fake_trial)
    monkeypatch.setattr(matrix, "git_commit", lambda: "a" * 40)

    def run(out: Path, shard: Shard | None = None, repeat: int = 3, **kw) -> dict:
        return matrix.run_matrix(SCENARIOS, report_dir=out, quick=True, repeat=repeat, shard=shard, **kw)

    return run


def test_shard_parse_and_a_stable_round_robin():
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "2", "a/b", "1/101", "-1/2"):
        with pytest.raises(InputError, match="expected I/N"):
            Shard.parse(bad)
    units = [f"s{i}#{r}" for i in range(5) for r in (1, 2, 3)]
    parts = [Shard(i, 4).select(units) for i in range(1, 5)]
    assert sorted(u for p in parts for u in p) == sorted(units)  # every unit once
    assert {len(p) for p in parts} == {3, 4}  # balanced to one unit
    assert Shard(2, 4).select(list(reversed(units))) == parts[1]  # the order units come in does not matter


def test_results_record_what_a_merge_checks(fake_matrix, tmp_path):
    results = fake_matrix(tmp_path / "s1", Shard(1, 2))
    assert results["commit"] == "a" * 40
    settings = results["settings"]
    assert (settings["quick"], settings["repeat"], settings["backend"], settings["time_scale"]) == (
        True,
        3,
        "netns",
        0.1,
    )
    assert set(settings["scenarios"]) == set(SCENARIOS)
    assert len(settings["scenarios"]["baseline"]["sha256"]) == 64
    assert results["shard"]["index"] == 1 and results["shard"]["count"] == 2
    all_units = [u for e in results["plan"] for u in e["units"]]
    assert len(all_units) == 9 and results["shard"]["units"] == Shard(1, 2).select(all_units)
    ran = sorted(t["unit"] for e in results["scenarios"] for t in e["trials"])
    assert ran == sorted(results["shard"]["units"])
    on_disk = json.loads((tmp_path / "s1" / "results.json").read_text())
    assert on_disk["shard"] == results["shard"]


def test_merged_shards_give_the_unsharded_table(fake_matrix, tmp_path):
    whole = fake_matrix(tmp_path / "whole")
    for i in (1, 2, 3):
        fake_matrix(tmp_path / f"s{i}", Shard(i, 3))
    merged = merge_reports([tmp_path / f"s{i}" for i in (3, 1, 2)], tmp_path / "merged")
    assert report.table_rows(merged) == report.table_rows(whole)
    fanout = next(row for row in report.table_rows(merged) if row[0] == "hc-fanout")
    assert fanout[3].startswith("FLAKY 2/3 ")  # O3: the disagreement survives the merge
    assert merged["missing_shards"] == [] and all(s["status"] == "passed" for s in merged["scenarios"])
    assert (tmp_path / "merged" / "report.md").read_text().count("| hc-fanout |") == 1
    for name in ("report.html", "junit.xml", "results.json"):
        assert (tmp_path / "merged" / name).exists()


def test_a_missing_shard_is_reported_and_fails(fake_matrix, tmp_path):
    for i in (1, 2):
        fake_matrix(tmp_path / f"s{i}", Shard(i, 3))
    result = CliRunner().invoke(
        app, ["report", "merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--report", str(tmp_path / "m")]
    )
    assert result.exit_code == 1
    assert "MISSING Missing shards: 3/3" in result.output
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    lost = Shard(3, 3).select([u for e in merged["plan"] for u in e["units"]])
    assert sorted(u for s in merged["scenarios"] for u in s["missing"]) == sorted(lost)
    md = (tmp_path / "m" / "report.md").read_text()
    assert "**Missing shards: 3/3**" in md and "incomplete (1 missing)" in md


def test_a_scenario_whose_every_run_is_missing_keeps_its_row(fake_matrix, tmp_path):
    fake_matrix(tmp_path / "s1", Shard(1, 3), repeat=1)  # 3 units over 3 shards: one scenario per shard
    merged = merge([read_part(tmp_path / "s1")])
    assert [s["id"] for s in merged["scenarios"]] == SCENARIOS
    absent = [s for s in merged["scenarios"] if not s["trials"]]
    assert len(absent) == 2 and all(s["status"] == "incomplete" for s in absent)
    assert all(row[1:-1] == ["-"] * 5 for row in report.table_rows(merged) if row[0] in {s["id"] for s in absent})


def _edited(src: Path, dst: Path, **changes) -> Path:
    data = json.loads((src / "results.json").read_text())
    for key, value in changes.items():
        if key == "settings":
            data["settings"].update(value)
        else:
            data[key] = value
    dst.mkdir()
    (dst / "results.json").write_text(json.dumps(data))
    return dst


def test_shards_of_another_commit_are_refused(fake_matrix, tmp_path):
    fake_matrix(tmp_path / "s1", Shard(1, 2))
    fake_matrix(tmp_path / "s2", Shard(2, 2))
    other = _edited(tmp_path / "s2", tmp_path / "other", commit="b" * 40)
    result = CliRunner().invoke(app, ["report", "merge", str(tmp_path / "s1"), str(other)])
    assert single_error(result) == (
        f"Error: {other}/results.json: made at commit bbbbbbbbbbbb, {tmp_path}/s1/results.json at aaaaaaaaaaaa: "
        "merge shards of one commit"
    )


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"repeat": 5}, "repeat 5 vs 3"),
        ({"quick": False}, "quick False vs True"),
        ({"sets": ["nodes_per_az=3"]}, "sets ['nodes_per_az=3'] vs []"),
    ],
)
def test_shards_with_other_settings_are_refused(fake_matrix, tmp_path, change, said):
    fake_matrix(tmp_path / "s1", Shard(1, 2))
    fake_matrix(tmp_path / "s2", Shard(2, 2))
    other = _edited(tmp_path / "s2", tmp_path / "other", settings=change)
    with pytest.raises(InputError) as exc:
        check_parts([read_part(tmp_path / "s1"), read_part(other)])
    assert f"settings differ from {tmp_path}/s1/results.json's ({said})" in str(exc.value)


def test_a_changed_scenario_file_is_refused(fake_matrix, tmp_path):
    fake_matrix(tmp_path / "s1", Shard(1, 2))
    fake_matrix(tmp_path / "s2", Shard(2, 2))
    data = json.loads((tmp_path / "s2" / "results.json").read_text())
    scenarios = data["settings"]["scenarios"]
    scenarios["hc-fanout"] = {**scenarios["hc-fanout"], "sha256": "0" * 64}
    other = _edited(tmp_path / "s2", tmp_path / "other", settings={"scenarios": scenarios})
    with pytest.raises(InputError, match=r"scenario hc-fanout: its files differ"):
        merge([read_part(tmp_path / "s1"), read_part(other)])


def test_other_splits_and_doubles_are_refused(fake_matrix, tmp_path):
    fake_matrix(tmp_path / "a", Shard(1, 2))
    fake_matrix(tmp_path / "b", Shard(2, 3))
    with pytest.raises(InputError, match=r"shard 2/3 is not one of .* 2 shards"):
        merge([read_part(tmp_path / "a"), read_part(tmp_path / "b")])
    with pytest.raises(InputError, match=r"shard 1/2 given twice"):
        merge([read_part(tmp_path / "a"), read_part(tmp_path / "a" / "results.json")])


def test_what_is_not_a_mergeable_results_file(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"scenarios": []}))
    result = CliRunner().invoke(app, ["report", "merge", str(tmp_path / "old.json")])
    assert "no commit, settings, shard, plan: not the results.json of a `lab matrix` run" in single_error(result)
    (tmp_path / "torn.json").write_text('{"scenarios": [')
    assert "torn.json:1: not JSON" in single_error(
        CliRunner().invoke(app, ["report", "merge", str(tmp_path / "torn.json")])
    )
    missing = single_error(CliRunner().invoke(app, ["report", "merge", str(tmp_path / "nowhere")]))
    assert missing == (
        f"Error: {tmp_path}/nowhere: cannot read: No such file or directory; "
        "give a report directory or its results.json"
    )


# --- the GitHub Actions workflow: shards side by side, then the merge ----------------------------------------

WORKFLOWS = REPO / ".github" / "workflows"


def workflow(path: Path) -> dict:
    return YAML(typ="safe").load(path.read_text())


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflows_are_valid_github_workflows(path):
    # SchemaStore's github-workflow.json, vendored in tests/fixtures (see its README there).
    schema = json.loads((REPO / "tests" / "fixtures" / "github-workflow.json").read_text())
    errors = sorted(Draft7Validator(schema).iter_errors(workflow(path)), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:3])


def test_the_schema_catches_a_broken_workflow():
    schema = json.loads((REPO / "tests" / "fixtures" / "github-workflow.json").read_text())
    broken = workflow(WORKFLOWS / "lab-matrix.yml")
    broken["jobs"]["merge"]["needs"] = {"shard": True}  # needs: a job id or a list of them
    assert list(Draft7Validator(schema).iter_errors(broken))


def test_the_matrix_workflow_runs_every_shard_then_merges_them():
    jobs = workflow(WORKFLOWS / "lab-matrix.yml")["jobs"]
    shards = jobs["shard"]["strategy"]["matrix"]["shard"]
    run = next(s["run"] for s in jobs["shard"]["steps"] if "lab matrix" in s.get("run", ""))
    assert f"--shard ${{{{ matrix.shard }}}}/{len(shards)}" in run and shards == list(range(1, len(shards) + 1))
    assert jobs["shard"]["strategy"]["fail-fast"] is False
    merge_job = jobs["merge"]
    assert merge_job["needs"] == "shard" and merge_job["if"] == "always()"
    assert any("lab report merge shards/" in s.get("run", "") for s in merge_job["steps"])


def test_matrix_cli_with_repeats_and_a_shard(fake_matrix, tmp_path):
    out = tmp_path / "r"
    result = CliRunner().invoke(
        app, ["matrix", "baseline", "hc-fanout", "--quick", "--repeat", "2", "--shard", "1/2", "--report", str(out)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["repeat"] == 2 and results["shard"]["units"] == ["baseline#1", "hc-fanout#1"]
    assert "YES 1/1" in result.output and "passed" in result.output
    case = ET.parse(out / "junit.xml").getroot().find("testsuite/testcase[@name='errors > 0']/system-out")
    assert case.text.startswith("passed in 1/1 counted runs (measured ")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--repeat", "0"], "Error: --repeat 0: must be between 1 and 100"),
        (["--shard", "5/4"], "Error: --shard '5/4': expected I/N with 1 <= I <= N <= 100, e.g. --shard 2/4"),
        (["--shard", "two"], "Error: --shard 'two': expected I/N with 1 <= I <= N <= 100, e.g. --shard 2/4"),
    ],
)
def test_matrix_cli_bad_repeat_or_shard_is_one_line(args, line):
    assert single_error(CliRunner().invoke(app, ["matrix", "baseline", "--quick", *args])) == line


def test_scenario_run_repeat_is_checked_too():
    result = CliRunner().invoke(app, ["scenario", "run", "baseline", "--repeat", "101"])
    assert single_error(result) == "Error: --repeat 101: must be between 1 and 100"


def test_units_run_round_by_round(tmp_path):
    results, units = matrix.plan_matrix(["baseline", "hc-fanout"], report_dir=tmp_path, quick=True, repeat=2)
    assert [u.id for u in units] == ["baseline#1", "hc-fanout#1", "baseline#2", "hc-fanout#2"]
    assert [e["status"] for e in results["scenarios"]] == ["incomplete", "incomplete"]  # nothing run yet
    _, mine = matrix.plan_matrix(
        ["baseline", "hc-fanout"], sets=["nodes_per_az=1,3"], report_dir=tmp_path, quick=True, shard=Shard(2, 2)
    )
    assert [u.id for u in mine] == ["baseline[nodes_per_az=3]#1", "hc-fanout[nodes_per_az=3]#1"]
    assert mine[0].opts.extra_set == ["nodes_per_az=3"]  # each unit runs with its own combination
