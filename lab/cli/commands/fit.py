"""`lab fit` and `lab incident import|validate`: hold lab runs against an incident's own figures.

The library is imported inside each command (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lab.cli.app import app, command, console, print_json, progress
from lab.cli.options import JsonOpt, output_option

incident_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Incident files: validate them, import CloudWatch exports."
)
app.add_typer(incident_app, name="incident")


@command(
    "fit",
    epilog="Examples:\n\n  lab fit incidents/seed-2017.yaml --quick --report reports/fit\n\n"
    "  lab fit incidents/seed-2017.yaml hc-fanout --sweep elb.nodes_per_az=1,6 --quick\n\n"
    "  lab fit my-incident.yaml --from reports/latest   # runs a matrix already recorded",
)
def fit_cmd(
    incident: str = typer.Argument(..., metavar="INCIDENT", help="Incident file (YAML)."),
    scenarios: list[str] = typer.Argument(
        None,
        metavar="SCENARIO",
        help="Hypotheses: scenario files or built-in names (default: the incident's list).",
    ),
    sweep: list[str] = typer.Option(
        [],
        "--sweep",
        metavar="KEY=V1,V2",
        help="KEY=V1,V2: a parameter axis for every named scenario (replaces their sweeps).",
    ),
    quick: bool = typer.Option(False, "--quick", help="Each scenario's quick settings (ELB timers x0.1)."),
    report_dir: Path = typer.Option(
        Path("reports/fit"), "--report", metavar="DIR", help="Directory for fit.md, fit.json, plots, journals."
    ),
    reuse: list[Path] = typer.Option(
        [], "--from", metavar="DIR", help="Also fit the runs recorded in this report directory (repeatable)."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Replay hypotheses (each sweep point, each variant on its own lab) and rank them by how well they reproduce
    the incident's figures, converted to each figure's CloudWatch statistic and period."""
    from rich.markup import escape  # imported at use for start-up speed
    from rich.table import Table

    from lab.incidents.report import error_text, point_text, value_text
    from lab.incidents.runs import run_fit

    with progress("lab fit") as step:
        result = run_fit(incident, scenarios or [], sweep, quick, report_dir, reuse, step)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"Fit of {incident}", title_justify="left")
    for col in ("figure", "observed", "best hypothesis and parameters", "lab value", "error", "within"):
        table.add_column(col, overflow="fold")
    for row in result["table"]:
        m = row["match"]
        if m is None:
            table.add_row(row["figure"], row["observed"], f"[dim]{escape(row['why_not'])}[/]", "-", "-", "[red]no[/]")
            continue
        where = f"{m['hypothesis']} ({point_text(m['point'])}; {m['variant']}; {m['phase']}; {m['period']} s)"
        ok = "[green]yes[/]" if m["within"] else "[red]no[/]"
        table.add_row(row["figure"], row["observed"], escape(where), value_text(m["lab"]), error_text(m), ok)
    console().print(table)
    if result["hypotheses"]:
        top = result["hypotheses"][0]
        explains = ", ".join(top["explains"]) or "no figure"
        console().print(escape(f"best single hypothesis: {top['key']} ({explains} within tolerance)"))
    if result["pairs"]:
        p = result["pairs"][0]
        console().print(escape(f"best pair: {' + '.join(p['members'])} ({', '.join(p['explains'])})"))
    console().print(f"report: {result['files']['fit.md']} (also fit.json, plots, journals)")


@command("validate", on=incident_app, epilog="Example:\n\n  lab incident validate incidents/seed-2017.yaml")
def validate_cmd(files: list[Path] = typer.Argument(..., help="Incident files."), json_out: bool = JsonOpt) -> None:
    """Check incident files (schema, figures, statistics, periods) without running anything."""
    from lab.incidents.files import load_incident  # imported at use for start-up speed

    out = []
    for path in files:
        inc = load_incident(path)
        out.append({"file": str(path), "ok": True, "figures": len(inc.figures), "hypotheses": len(inc.hypotheses)})
    if json_out:
        print_json(out)
        return
    for o in out:
        console().print(f"{o['file']}: ok ({o['figures']} figures, {o['hypotheses']} hypotheses)")


@command(
    "import",
    on=incident_app,
    epilog="Examples:\n\n"
    "  aws cloudwatch get-metric-statistics --namespace AWS/ELB --metric-name BackendConnectionErrors \\\n"
    "    --dimensions Name=LoadBalancerName,Value=my-elb --statistics Sum --period 60 \\\n"
    "    --start-time 2017-06-01T00:00:00Z --end-time 2017-06-02T00:00:00Z > bce.json\n\n"
    "  lab incident import bce.json --metric elb.BackendConnectionErrors --phase idle -o incident.yaml\n\n"
    "  lab incident import page1.json page2.json --id m1 --statistic Sum --metric elb.RequestCount --phase load",
)
def import_cmd(
    files: list[Path] = typer.Argument(..., help="get-metric-statistics JSON, get-metric-data JSON (pages), or CSV."),
    metric: str = typer.Option(..., "--metric", help="The figure's metric, e.g. elb.BackendConnectionErrors."),
    statistic: str = typer.Option(
        None, "--statistic", help="Sum, Average, ... (default: the export's only one, else Sum)."
    ),
    period: int = typer.Option(None, "--period", help="60 or 300 (default: the step between the export's points)."),
    result_id: str = typer.Option(None, "--id", help="get-metric-data: which MetricDataResults Id."),
    phase: str = typer.Option("load", "--phase", help="What the series covers: idle, load or after-load."),
    instances: int = typer.Option(None, "--instances", help="Instances each ELB node checked."),
    cross_zone: bool = typer.Option(None, "--cross-zone/--no-cross-zone", help="Cross-zone load balancing."),
    figure_id: str = typer.Option("imported", "--figure", help="The figure's id."),
    title: str = typer.Option("Imported CloudWatch series", "--title", help="The incident's title (new files)."),
    output: Path = output_option("Incident file to write (a figure is added if it exists).", required=True),
    json_out: bool = JsonOpt,
) -> None:
    """Turn a CloudWatch export into a figure of an incident file (time series, its statistic and period)."""
    from lab.incidents.files import import_export  # imported at use for start-up speed

    conditions = {"phase": phase, "instances": instances, "cross_zone": cross_zone}
    figure, series = import_export(files, output, metric, conditions, statistic, period, result_id, figure_id, title)
    if json_out:
        print_json(
            {
                "file": str(output),
                "figure": figure.id,
                "points": len(series.points),
                "statistic": figure.statistic,
                "period": figure.periods[0],
                "warnings": series.warnings,
            }
        )
        return
    console().print(
        f"{output}: figure '{figure.id}': {len(series.points)} points, {figure.statistic} per {figure.periods[0]} s"
    )
    for w in series.warnings:
        console().print(f"warning: {w}")
