"""`lab fault list|apply|revert|status`: inject the incident's hypotheses into a running lab and remove them.

The library is imported inside each command (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import typer

from lab.cli.app import app, command, console, print_json, progress
from lab.cli.options import JsonOpt, NameOpt, duration_option, lab_name, seconds
from lab.errors import InputError

fault_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Inject, list and revert faults (the incident's hypotheses) on a running lab.",
)
app.add_typer(fault_app, name="fault")


def fault_command(name: str, epilog: str) -> Callable:
    """A `lab fault` sub-command with the CLI's error boundary (one `Error:` line, exit 1)."""
    return command(name, on=fault_app, epilog=epilog)


def _when(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "-"


@fault_command("list", epilog="Examples:\n\n  lab fault list\n\n  lab fault list --json")
def list_cmd(json_out: bool = JsonOpt) -> None:
    """The fault kinds, their targets and parameters (no lab needed)."""
    from lab import faults  # imported at use for start-up speed

    kinds = faults.list_kinds()
    if json_out:
        print_json(kinds)
        return
    for k in kinds:
        console().print(f"[bold]{k['kind']}[/]: {k['summary']}  (--target: {k['target']})")
        for p in k["params"]:
            allowed = f"; {p['form']} {p['allowed']}".rstrip()
            default = f" (default {p['default_text']})" if p["default_text"] else ""
            console().print(f"    {p['name']}: {p['help']}{allowed}{default}", markup=False)
        console().print(f"    e.g. {k['example']}")


@fault_command(
    "apply",
    epilog="Examples:\n\n  lab fault apply cross-az delay=50ms jitter=5ms\n\n"
    "  lab fault apply link --target node-a1 loss=2% bandwidth=10mbit --duration 30s\n\n"
    "  lab fault apply conntrack-exhaustion --target node-b1 mode=fill free=0\n\n"
    "  lab fault apply healthcheck-misroute --target node-a1 variant=first-listener --dry-run",
)
def apply_cmd(
    kind: str = typer.Argument(..., help="Fault kind (see `lab fault list`)."),
    params: list[str] = typer.Argument(None, help="Parameters as KEY=VALUE, e.g. delay=50ms loss=1%."),
    target: str = typer.Option(None, "--target", "-t", help="Host, link, service, pod or AZ (depends on the kind)."),
    duration: str = duration_option(None, "Revert automatically after this long", "--duration", "-d"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be changed; change nothing."),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Apply a fault (idempotent: the same fault again changes nothing)."""
    from lab import faults  # imported at use for start-up speed

    until = None if duration is None else seconds(duration, "--duration")
    with progress(f"lab fault apply {kind}", quiet=json_out or dry_run) as step:
        result = faults.apply_to(lab_name(name), kind, target, params or [], until, dry_run, progress=step)
    if json_out:
        print_json(result)
        return
    if result.get("dry_run"):
        engine = f", delay by {result['engine']}" if result.get("engine") else ""
        console().print(f"would apply {result['kind']} on {result['target']} ({result['params_text']}{engine}):")
        for line in result["changes"]:
            console().print(f"  {line}")
        return
    f = result["fault"]
    verb = "is already applied" if result["already"] else "applied"
    engine = f"; delay by {f['engine']}" if f.get("engine") else ""
    until = f"; reverts at {_when(f['expires_at'])}" if f.get("expires_at") else ""
    console().print(f"fault {f['id']} {verb}: {f['kind']} on {f['target']} ({f['params_text']}{engine}{until})")
    for line in f["changes"] + f["notes"]:
        console().print(f"  {line}")


@fault_command("revert", epilog="Examples:\n\n  lab fault revert 3\n\n  lab fault revert --all")
def revert_cmd(
    ids: list[int] = typer.Argument(None, help="Fault ids (see `lab fault status`)."),
    all_: bool = typer.Option(False, "--all", help="Revert every applied fault."),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Revert faults, restoring exactly the state before them (idempotent)."""
    from lab import faults  # imported at use for start-up speed
    from lab.lab import Lab

    if not ids and not all_:
        raise InputError("give fault ids or --all (see `lab fault status`)")
    if ids and all_:
        raise InputError("give fault ids or --all, not both")
    lab = Lab.load(lab_name(name))
    done = faults.revert(lab, None if all_ else ids)  # under a second: no progress needed
    if json_out:
        print_json(done)
        return
    if not done:
        console().print("no fault is applied; nothing to revert")
    for f in done:
        note = " (was not applied)" if f["already"] else ""
        console().print(f"fault {f['id']} reverted{note}: {f['kind']} on {f['target']}")


@fault_command("status", epilog="Examples:\n\n  lab fault status\n\n  lab fault status --active --json")
def status_cmd(
    active: bool = typer.Option(False, "--active", help="Only faults that are applied now."),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Every fault of the lab: id, kind, target, params, applied at, state, and what it changed."""
    from rich.table import Table  # imported at use for start-up speed

    from lab import faults
    from lab.lab import Lab

    lab = Lab.load(lab_name(name))
    rows = faults.status(lab, active_only=active)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console().print(f"lab '{lab.name}' has no faults; see `lab fault list`")
        return
    table = Table(title=f"faults of lab '{lab.name}'", title_justify="left")
    for col in ("id", "kind", "target", "params", "applied at", "until", "state"):
        table.add_column(col)
    for r in rows:
        state = r["state"] + (f" ({r['problem']})" if r.get("problem") else "")
        style = "green" if r["state"] == "Injected" and not r.get("problem") else "dim"
        table.add_row(
            str(r["id"]),
            r["kind"],
            r["target"],
            r["params_text"] + (f" ({r['engine']})" if r.get("engine") else ""),
            _when(r["applied_at"]),
            _when(r["expires_at"]),
            f"[{style}]{state}[/]",
        )
    console().print(table)
    for r in rows:
        if r["state"] != "Not Injected":
            console().print(f"fault {r['id']} changed:", markup=False)
            for line in r["changes"] + r["notes"]:
                console().print(f"  {line}", markup=False)
