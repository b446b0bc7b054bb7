"""Run an incident's hypotheses through the scenario runner (one lab per sweep point and variant), and read
the runs back from a report directory (this one's runs.json, or a matrix's results.json) with their journals."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.incidents import fit as fitting
from lab.incidents import report
from lab.incidents.files import load_incident
from lab.incidents.fit import RunData
from lab.metrics.recorder import read_series
from lab.scenarios.loader import LoadedScenario, expand_sweep
from lab.scenarios.matrix import expand_sets
from lab.scenarios.runner import RunOptions, run_scenario

Progress = Callable[[str], None]


def command_for(incident: str, loaded: LoadedScenario, quick: bool, report_dir: Path) -> str:
    """The one command that replays exactly this point (its variants) and fits it."""
    words = ["lab", "fit", incident, loaded.id]
    for p in loaded.point:
        words += ["--sweep", p]
    words += ["--quick"] if quick else []
    return shlex.join(words + ["--report", str(report_dir)])


def plan(hypotheses: list[tuple[str, dict[str, list[Any]] | None]]) -> list[LoadedScenario]:
    """Every hypothesis' points, validated before anything runs."""
    out = []
    for name, sweep in hypotheses:
        out += expand_sweep(name, None, sweep)
    return out


def run_points(
    incident: str, points: list[LoadedScenario], quick: bool, report_dir: Path, progress: Progress
) -> list[dict[str, Any]]:
    """Each point through the scenario runner; runs.json is rewritten after each (an interrupt keeps the rest)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, loaded in enumerate(points):
        progress(f"[{i + 1}/{len(points)}] {loaded.id}{loaded.label}")
        opts = RunOptions(report_dir=report_dir, quick=quick, label=loaded.label, lab_prefix="f", time_scale=1.0)
        entry = run_scenario(loaded, opts, lambda m, i=i: progress(f"[{i + 1}/{len(points)}] {m}"))
        entry["hypothesis_id"] = loaded.id
        entry["point"] = list(loaded.point)
        entry["command"] = command_for(incident, loaded, quick, report_dir)
        for trial in entry["trials"]:
            for run in trial["runs"]:
                run.pop("intervals", None)  # the journal holds them
        entries.append(entry)
        (report_dir / "runs.json").write_text(json.dumps({"scenarios": entries}, indent=2, default=str) + "\n")
    return entries


def read_runs(report_dir: Path) -> list[RunData]:
    """The runs recorded under a directory: `lab fit`'s runs.json or `lab matrix`'s results.json."""
    for name in ("runs.json", "results.json"):
        index = report_dir / name
        if index.exists():
            break
    else:
        raise InputError(f"{report_dir}: no runs.json or results.json; run `lab fit` or `lab matrix` with --report")
    try:
        entries = json.loads(index.read_text())["scenarios"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{index}: not a report of `lab fit` or `lab matrix`") from None
    out = []
    for e in entries:
        hyp = e.get("hypothesis_id") or e["id"].split("[", 1)[0]
        point = tuple(e.get("point") or (e["id"].split("[", 1)[1].rstrip("]").split(",") if "[" in e["id"] else ()))
        # `lab matrix` and `lab fit` write trials (repeats), each with its runs; older reports had runs only
        trials = e.get("trials") or [{"runs": e.get("runs", [])}]
        for run in (r for t in trials for r in t.get("runs", [])):
            journal = report_dir / run["journal"]
            if not journal.exists():
                continue
            header, intervals, _events = read_series(journal)
            out.append(
                RunData(
                    hypothesis=hyp,
                    point=point,
                    variant=run["variant"],
                    journal=str(journal),
                    command=e.get("command") or _matrix_command(e, report_dir),
                    header=header,
                    intervals=intervals,
                    phases=run.get("phases", []),
                )
            )
    return out


def _matrix_command(entry: dict[str, Any], report_dir: Path) -> str:
    words = ["lab", "scenario", "run", entry["file"]]
    point = entry["id"].split("[", 1)[1].rstrip("]").split(",") if "[" in entry["id"] else []
    for p in point:
        words += ["--set", p]
    words += ["--quick"] if entry.get("time_scale", 1.0) < 1 else []
    return shlex.join(words + ["--report", str(report_dir)])


def run_fit(
    incident_path: str,
    scenarios: list[str],
    sweep: list[str],
    quick: bool,
    report_dir: Path,
    reuse: list[Path],
    progress: Progress = lambda _m: None,
) -> dict[str, Any]:
    """Run the hypotheses (the named scenarios, else the incident's own list), or reuse recorded runs, fit, report."""
    incident = load_incident(incident_path)
    runs: list[RunData] = []
    for d in reuse:
        runs += read_runs(d)
    axes = _sweep_axes(sweep)
    if scenarios:
        hypotheses = [(s, axes) for s in scenarios]
    elif not reuse:
        hypotheses = [(h.scenario, axes if axes is not None else (h.sweep or None)) for h in incident.hypotheses]
        if not hypotheses:
            raise InputError(f"{incident_path}: no hypotheses listed; name scenarios (lab fit INCIDENT SCENARIO...)")
    else:
        hypotheses = []
    points = plan(hypotheses)  # every point validated before the first lab comes up
    if points:
        run_points(incident_path, points, quick, report_dir, progress)
        runs += read_runs(report_dir)
    if not runs:
        raise InputError("no runs to fit: name scenarios, or --from a report directory with journals")
    result = fitting.fit(incident, runs)
    commands: dict[str, list[str]] = {}
    for r in runs:
        commands.setdefault(r.command, []).append(r.journal)
    meta = {
        "incident": incident_path,
        "runs": len(runs),
        "points": len({r.key for r in runs}),
        "quick": quick,
        "note": "quick timers (ELB x0.1; per-period figures per ELB period)" if quick else "real ELB timers",
        "commands": commands,
    }
    files = report.write(result, incident, runs, meta, report_dir)
    return {**report.plain(result), "meta": meta, "files": files}


def _sweep_axes(sweep: list[str]) -> dict[str, list[Any]] | None:
    """`--sweep k=1,6 --sweep j=x` -> {k: [1, 6], j: [x]} (values as `--set` takes them), or None."""
    if not sweep:
        return None
    axes: dict[str, list[Any]] = {}
    for item in sweep:
        for assignment in expand_sets([item]):
            key, value = assignment[0].split("=", 1)
            axes.setdefault(key, []).append(value)  # text, as `--set` takes it: 320 stays 320
    return axes
