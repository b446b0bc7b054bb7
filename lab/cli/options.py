"""The options several commands share, each defined once: its flags, its help, its default, its parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lab.errors import InputError

NAME_HELP = "Lab name (default: $LAB_NAME if set, else 'default'; never whichever lab happens to be up)."
DURATION_UNITS = "500ms, 2s, 1m, 1h; a bare number is seconds"


def name_option(help: str = NAME_HELP, default: str | None = None) -> Any:
    return typer.Option(default, "--name", "-n", metavar="NAME", help=help)


def topology_option(help: str = "Topology YAML (default: topologies/default.yaml).") -> Any:
    return typer.Option(None, "--topology", "-t", metavar="FILE", help=help)


def set_option(help: str = "Override a topology field: KEY=VALUE (repeatable).", metavar: str = "KEY=VALUE") -> Any:
    return typer.Option([], "--set", metavar=metavar, help=help)


def output_option(help: str = "Also write the JSON result to FILE.", required: bool = False) -> Any:
    return typer.Option(... if required else None, "--output", "-o", metavar="FILE", help=help)


def duration_option(default: str | None, help: str, *flags: str) -> Any:
    """A duration: text with a unit, parsed by `seconds` when the command runs (bad text: one Error line)."""
    return typer.Option(default, *flags, metavar="DURATION", help=f"{help} ({DURATION_UNITS}).")


NameOpt = name_option()
JsonOpt = typer.Option(False, "--json", help='Print JSON for machines; an error is {"error": "..."} on stdout, exit 1.')
OutputOpt = output_option()
TopologyOpt = topology_option()
SetOpt = set_option()
BackendOpt = typer.Option("netns", "--backend", "-b", help="netns (default) or kind.")
ReportOpt = typer.Option(
    Path("reports/latest"), "--report", metavar="DIR", help="Directory for report.md/html, junit.xml, results.json."
)
TimeScaleOpt = typer.Option(1.0, "--time-scale", help="Shrink the ELB's timers (0 < F <= 1) for quick runs.")
ViaOpt = typer.Option("elb", "--via", help="elb (default), node (its NodePort) or pod (from the pod's node).")
FromOpt = typer.Option(None, "--from", metavar="HOST", help="Host to call from (default: the client tier).")
TimeoutOpt = duration_option("5s", "Connect and RPC timeout", "--timeout")


def seconds(text: str, flag: str) -> float:
    """A duration option's value in seconds; bad text is one `Error: --flag ...` line."""
    from lab.models.common import parse_duration  # imported at use for start-up speed (pydantic)

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InputError(f"{flag}: {exc}") from None


def lab_name(name: str | None) -> str:
    """--name, else the fixed default (see NAME_HELP)."""
    from lab.lab import default_lab_name  # imported at use for start-up speed (models, pydantic)

    return name or default_lab_name()
