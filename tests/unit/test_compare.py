"""Quick vs full: the verdict diff and its markdown, and the --compare-scales option's input checks."""

from __future__ import annotations

from typer.testing import CliRunner

from lab.cli.app import app
from lab.scenarios.compare import diff, markdown, quick_notes


def verdict(word: str, figure: str) -> dict:
    """An observation as the matrix records it over its repeats (lab.scenarios.aggregate)."""
    yes = {"YES": 1, "no": 0, "n/a": 0}[word]
    return {"verdict": word, "reproduced": {"YES": True, "no": False}.get(word), "yes": yes, "counted": 1,
            "figure": figure}  # fmt: skip


def results(o4: str, status: str = "passed") -> dict:
    observations = {o: verdict("n/a", "not a control scenario") for o in ("O1", "O3", "O5")}
    observations["O2"] = verdict("YES", "35% succeeded")
    observations["O4"] = verdict(o4, "timeouts")
    return {
        "scenarios": [
            {
                "id": "hc-misroute",
                "file": "scenarios/hc-misroute.yaml",
                "status": status,
                "observations": observations,
                "expectations": [{"text": "client.error_ratio > 0.1", "passed": status == "passed", "measured": 0.6}],
            }
        ]
    }


def test_same_verdicts_make_no_difference():
    rows = diff(results("YES"), results("YES"))
    assert len(rows) == 7  # O1-O5, one expectation, the status
    assert all(r["same"] for r in rows)
    assert "0 of 7 verdicts differ." in markdown(rows)


def test_a_different_observation_is_named_with_both_figures_and_the_files_note():
    rows = diff(results("no"), results("YES"), {"hc-misroute": "O4 cannot agree: retries vs client timeout."})
    assert [(r["what"], r["quick"], r["full"]) for r in rows if not r["same"]] == [("O4", "no", "YES")]
    text = markdown(rows)
    assert "| hc-misroute | - | YES | - | **no / YES** | - | passed |" in text
    assert "1 of 7 verdicts differ:" in text and "O4 cannot agree" in text


def test_a_scenario_run_at_one_scale_only_is_left_out():
    full = results("YES")
    full["scenarios"][0]["id"] = "other"
    assert diff(results("YES"), full) == []


def test_notes_come_from_the_scenario_files():
    notes = quick_notes(results("YES"))
    assert "min(connect timeout, 1 s)" in notes["hc-misroute"]


def test_compare_scales_runs_both_scales_itself():
    result = CliRunner().invoke(app, ["matrix", "baseline", "--compare-scales", "--quick"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: --compare-scales runs the quick and the full-scale runs itself: drop --quick, --set, --shard"
    )


def test_compare_scales_cli_prints_the_table_and_exits_1_on_a_difference(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from lab.cli import app
    from lab.scenarios import compare

    rows = [{"scenario": "x", "same": False, "cells": {}, "differences": []}]
    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: (rows, {"compare.md": tmp_path / "compare.md"}))
    monkeypatch.setattr(compare, "markdown", lambda rs: "| scenario |\n|---|\n| x |\n")
    result = CliRunner().invoke(app, ["matrix", "baseline", "--compare-scales", "--report", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "| x |" in result.output and "comparison:" in result.output
