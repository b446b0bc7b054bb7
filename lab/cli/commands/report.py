"""`lab report merge`: the shards of a matrix (run on several machines) as one report."""

from __future__ import annotations

from pathlib import Path

import typer

from lab.cli.app import app, command
from lab.cli.options import JsonOpt
from lab.cli.views import finish_matrix

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
    report_dir: Path = typer.Option(
        Path("reports/merged"), "--report", metavar="DIR", help="Directory for the merged reports."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Merge the results of `lab matrix --shard I/N` runs into one report (md, html, junit, json) with the
    same table as an unsharded run. Refuses shards of another commit or other settings; exit 1 when a
    shard or a run is missing (listed under the table), or a verdict failed."""
    from lab.scenarios.merge import merge_reports  # imported at use for start-up speed

    finish_matrix(merge_reports(parts, report_dir), json_out)
