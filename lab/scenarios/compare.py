"""Quick vs full scale: run the same scenarios both ways and set their verdicts side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.models.scenario import OBSERVATIONS
from lab.scenarios.loader import load_scenario
from lab.scenarios.matrix import run_matrix


def verdicts(results: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """(scenario, what) -> (verdict, figure) for every observation, expectation and overall status. Pure."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for s in results["scenarios"]:
        for o in OBSERVATIONS:
            obs = s.get("observations", {}).get(o) or {}
            word = obs.get("verdict", "n/a")
            counts = f"{obs['yes']}/{obs['counted']} " if word != "n/a" else ""
            out[(s["id"], o)] = (word, f"{counts}{obs.get('figure', '')}".strip())
        for e in s.get("expectations", []):
            counts = f"{e.get('counted', 1)} run(s), " if "counted" in e else ""
            out[(s["id"], e["text"])] = ("passed" if e["passed"] else "failed", f"{counts}measured {e['measured']}")
        out[(s["id"], "status")] = (s["status"], s.get("error") or "")
    return out


def diff(quick: dict[str, Any], full: dict[str, Any], notes: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per verdict of a scenario run at both scales (scenarios run at one scale only are left out);
    `notes`: scenario -> its file's quick.note, shown beside its differences. Pure."""
    q, f = verdicts(quick), verdicts(full)
    notes = notes or {}
    rows = []
    for key in [k for k in f if k in q]:
        scenario, what = key
        rows.append(
            {
                "scenario": scenario,
                "what": what,
                "quick": q[key][0],
                "quick_figure": q[key][1],
                "full": f[key][0],
                "full_figure": f[key][1],
                "same": q[key][0] == f[key][0],
                "note": notes.get(scenario, ""),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The observation verdicts at both scales, then every verdict that differs. Pure."""
    word = {"n/a": "-"}
    lines = ["| scenario | " + " | ".join(f"{o} quick / full" for o in OBSERVATIONS) + " | status quick / full |"]
    lines.append("|" + "---|" * (len(OBSERVATIONS) + 2))
    by_scenario: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], {})[r["what"]] = r
    for scenario, cells in by_scenario.items():
        out = []
        for what in [*OBSERVATIONS, "status"]:
            r = cells[what]
            q, f = word.get(r["quick"], r["quick"]), word.get(r["full"], r["full"])
            out.append(q if r["same"] else f"**{q} / {f}**")
        lines.append(f"| {scenario} | " + " | ".join(out) + " |")
    differ = [r for r in rows if not r["same"]]
    lines += ["", f"{len(differ)} of {len(rows)} verdicts differ" + (":" if differ else ".")]
    for r in differ:
        lines.append(
            f"- {r['scenario']}, {r['what']}: quick {r['quick']} ({r['quick_figure']}), "
            f"full {r['full']} ({r['full_figure']})" + (f". The scenario file: {r['note']}" if r["note"] else "")
        )
    return "\n".join(lines) + "\n"


def quick_notes(results: dict[str, Any]) -> dict[str, str]:
    """Each scenario's quick.note, from its file."""
    out = {}
    for s in results["scenarios"]:
        quick = load_scenario(s["file"]).scenario.quick
        out[s["id"]] = " ".join(quick.note.split()) if quick else ""
    return out


def run_compare(
    files: list[str],
    use_all: bool,
    report_dir: Path,
    progress: Callable[[str], None] = lambda _m: None,
    backend: str = "netns",
    repeat: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The scenarios quick (report_dir/quick), then at full scale (report_dir/full); compare.md and compare.json.
    A verdict agrees when its word (YES, no, FLAKY, n/a over the repeats) is the same at both scales."""
    runs = {}
    for scale, quick in (("quick", True), ("full", False)):
        runs[scale] = run_matrix(
            files,
            use_all=use_all,
            report_dir=report_dir / scale,
            quick=quick,
            progress=lambda m, scale=scale: progress(f"{scale} {m}"),
            backend=backend,
            repeat=repeat,
        )
    quick, full = runs["quick"], runs["full"]
    rows = diff(quick, full, quick_notes(full))
    paths = {"compare.md": report_dir / "compare.md", "compare.json": report_dir / "compare.json"}
    paths["compare.md"].write_text(markdown(rows))
    paths["compare.json"].write_text(json.dumps(rows, indent=2) + "\n")
    return rows, paths
