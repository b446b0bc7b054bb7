"""`lab report merge`: the shards of a matrix (run on several machines) as one report."""

from __future__ import annotations

from pathlib import Path

import typer

from lab.cli.app import app, command, console
from lab.cli.commands.scenario import finish_matrix
from lab.scenarios.merge import complete, merge_reports

report_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Work with the reports of matrix runs.")
app.add_typer(report_app, name="report")


@command(
    "merge",
    on=report_app,
    epilog="Examples:\n\n  lab report merge reports/shard-1 reports/shard-2 reports/shard-3 --report reports/matrix\n\n"
    "  lab report merge shards/*/results.json --json",
)
def merge_cmd(
    parts: list[Path] = typer.Argument(..., help="Report directories of the shards (or their results.json files)."),
    report_dir: Path = typer.Option(Path("reports/merged"), "--report", help="Directory for the merged reports."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Merge the results of `lab matrix --shard I/N` runs into one report (md, html, junit, json) with the
    same table as an unsharded run. Refuses shards of another commit or other settings; exit 1 when a
    shard or a run is missing, or a verdict failed."""
    results = merge_reports(parts, report_dir)
    if not complete(results) and not json_out:
        console.print("[red]incomplete:[/] the merged report lacks runs; see MISSING below the table")
    finish_matrix(results, json_out)
