"""`lab scenario list|validate|run|metrics` and `lab matrix`: replay hypotheses and answer the seed's question."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lab.backends import get_backend
from lab.cli.app import app, command, console, print_json, progress
from lab.errors import InputError
from lab.models.scenario import OBSERVATIONS
from lab.models.yamlio import read_yaml
from lab.scenarios import report
from lab.scenarios.loader import builtin, expand_sweep, load_scenario
from lab.scenarios.matrix import QUICK_SCALE, run_matrix
from lab.scenarios.metrics import CATALOG

scenario_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Replay one hypothesis as a scenario; list and validate them."
)
app.add_typer(scenario_app, name="scenario")

JsonOpt = typer.Option(False, "--json", help="Print JSON for machines.")
BackendOpt = typer.Option("netns", "--backend", "-b", help="netns (default) or kind.")
ReportOpt = typer.Option(Path("reports/latest"), "--report", help="Directory for report.md/html, junit.xml, ...")


@command("list", on=scenario_app, epilog="Example:\n\n  lab scenario list")
def list_cmd(json_out: bool = JsonOpt) -> None:
    """The built-in scenarios (scenarios/*.yaml): their titles and the observations they claim to explain."""
    rows = []
    for path in builtin():
        data = read_yaml(path) or {}
        rows.append(
            {
                "id": path.stem,
                "file": str(path),
                "title": data.get("title", ""),
                "observations": data.get("observations", []),
            }
        )
    if json_out:
        print_json(rows)
        return
    table = Table(title="built-in scenarios", title_justify="left")
    for col in ("id", "title", "claims"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["title"], " ".join(r["observations"]) or "-")
    console.print(table)


@command(
    "validate",
    on=scenario_app,
    epilog="Examples:\n\n  lab scenario validate scenarios/baseline.yaml\n\n"
    "  lab scenario validate conntrack-exhaustion",
)
def validate_cmd(
    files: list[str] = typer.Argument(..., help="Scenario files or built-in names."),
    json_out: bool = JsonOpt,
) -> None:
    """Check scenarios completely (schema, topology overrides, fault kinds and targets, metrics), running nothing."""
    out = []
    for name in files:
        loaded = load_scenario(name)
        points = expand_sweep(name)  # every sweep point, checked as a run would check it
        out.append(
            {
                "id": loaded.id,
                "file": str(loaded.path),
                "ok": True,
                "variants": loaded.scenario.variant_names(),
                "seconds": loaded.scenario.duration,
                "sweep_points": len(points) if loaded.scenario.sweep else 0,
            }
        )
    if json_out:
        print_json(out)
    else:
        for o in out:
            sweep = f", {o['sweep_points']} sweep point(s)" if o["sweep_points"] else ""
            console.print(
                f"{o['file']}: ok ({len(o['variants'])} variant(s){sweep}, {o['seconds']:g}s per run at full scale)"
            )


@command("metrics", on=scenario_app, epilog="Example:\n\n  lab scenario metrics")
def metrics_cmd(json_out: bool = JsonOpt) -> None:
    """Every metric an expectation may name, with its kind and statistics."""
    rows = [{"metric": m.name, "kind": m.kind, "stats": list(m.stats), "help": m.help} for m in CATALOG.values()]
    if json_out:
        print_json(rows)
        return
    table = Table(title="metrics for scenario expectations", title_justify="left")
    for col in ("metric", "kind", "stats (first is the default)", "meaning"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["metric"], r["kind"], ", ".join(r["stats"]), r["help"])
    console.print(table)


@command(
    "run",
    on=scenario_app,
    epilog="Examples:\n\n  lab scenario run baseline --quick\n\n"
    "  lab scenario run hc-fanout --time-scale 0.5\n\n"
    "  lab scenario run scenarios/hc-fanout.yaml --report reports/fanout",
)
def run_cmd(
    file: str = typer.Argument(..., help="Scenario file or built-in name."),
    report_dir: Path = ReportOpt,
    time_scale: float = typer.Option(
        1.0, "--time-scale", help="Shrink the ELB's and the scenario's timers (0 < F <= 1)."
    ),
    quick: bool = typer.Option(False, "--quick", help="The scenario's own quick settings, as `lab matrix --quick`."),
    overrides: list[str] = typer.Option([], "--set", help="Extra topology override KEY=VALUE (repeatable)."),
    backend: str = BackendOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Replay one scenario (each variant on its own lab), then judge it. Exit 1 when an expectation fails."""
    if not 0 < time_scale <= 1:
        raise InputError(f"--time-scale {time_scale:g}: must be > 0 and <= 1")
    if quick and time_scale != 1:
        raise InputError("--quick and --time-scale: choose one (--quick uses the scenario's quick time scale)")
    scale = None if quick else time_scale
    results = _run([file], False, [], report_dir, quick or time_scale < 1, scale, overrides, backend)
    finish_matrix(results, json_out)


@command(
    "matrix",
    epilog="Examples:\n\n  lab matrix --all --quick\n\n"
    "  lab matrix scenarios/hc-fanout.yaml --set nodes_per_az=1,2,3 --report reports/fanout\n\n"
    "  lab matrix --all --report reports/full   # real ELB timers: see README for its duration",
)
def matrix_cmd(
    files: list[str] = typer.Argument(None, help="Scenario files or built-in names (default: --all)."),
    use_all: bool = typer.Option(False, "--all", help="Every built-in scenario."),
    sets: list[str] = typer.Option([], "--set", help="KEY=V1,V2: run every scenario once per value (cross product)."),
    report_dir: Path = ReportOpt,
    quick: bool = typer.Option(False, "--quick", help=f"Scaled timers (x{QUICK_SCALE:g}) and short phases: CI-sized."),
    backend: str = BackendOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run scenarios one after another and print the hypothesis x observation table. Exit 1 on a failed verdict."""
    results = _run(files or [], use_all or not files, sets, report_dir, quick, None, [], backend)
    finish_matrix(results, json_out)


def _run(files, use_all, sets, report_dir, quick, scale, overrides, backend):
    get_backend(backend)  # an unknown backend fails before anything runs
    with progress("lab matrix" if len(files) != 1 else f"lab scenario {files[0]}") as step:
        return run_matrix(files, use_all, sets + list(overrides), report_dir, quick, scale, step, backend)


def finish_matrix(results: dict, json_out: bool) -> None:
    if json_out:
        print_json(results)
    else:
        print_table(results)
        console.print(f"reports: {results['files']['report.html']} (also report.md, junit.xml, results.json)")
    if any(s["status"] != "passed" for s in results["scenarios"]):
        raise typer.Exit(1)


def print_table(results: dict) -> None:
    table = Table(title="Which hypothesis reproduces which seed observation", title_justify="left")
    table.add_column("hypothesis (scenario)")
    for o in OBSERVATIONS:
        table.add_column(f"{o} {report.OBSERVATION_TEXT[o]}", overflow="fold")
    table.add_column("verdict")
    for row in report.table_rows(results):
        styled = []
        for c in row[1:-1]:
            style = "green" if c.startswith("YES") else ("red" if c.startswith("no") else "dim")
            styled.append(f"[{style}]{c}[/]")
        verdict = row[-1]
        table.add_row(row[0], *styled, f"[{'green' if verdict == 'passed' else 'red'}]{verdict}[/]")
    console.print(table)
    for s in results["scenarios"]:
        for e in s.get("expectations", []):
            if not e["passed"]:
                console.print(f"[red]FAILED[/] {s['id']}: {e['text']} (measured {e['measured']})")
        if s.get("error"):
            console.print(f"[red]ERROR[/] {s['id']}: {s['error']}")
