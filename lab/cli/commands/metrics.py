"""`lab metrics`, `lab top`, `lab plot`: the ELB's CloudWatch metrics, node counters and client outcomes.

The library is imported inside each function (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lab.cli.app import command, err_console, print_json
from lab.cli.app import console as _console
from lab.cli.options import JsonOpt, NameOpt, duration_option, lab_name, output_option, seconds
from lab.errors import InputError

if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and digits:
        return f"{value:.{digits}f}"
    return str(value)


def elb_table(record: dict[str, Any], header: dict[str, Any]) -> Table:
    """One row per CloudWatch metric, one column per ELB node (and per AZ when an AZ has several), then all."""
    from rich.table import Table  # imported at use for start-up speed

    m = record["elb"]["metrics"]
    span = record["t_end"] - record["t_start"]
    azs = {e["name"]: e["az"] for e in header["elb_nodes"]}
    nodes = list(m["RequestCount"]["by_elb_node"])
    multi_az = [az for az in m["RequestCount"]["by_az"] if sum(1 for n in nodes if azs.get(n) == az) > 1]
    table = Table(
        title=f"ELB, interval {span:.1f}s (counts: Sum; Latency: Average; gauges at the end)", title_justify="left"
    )
    table.add_column("metric")
    for n in nodes:
        table.add_column(f"{n}\n{azs.get(n, '')}", justify="right")
    for az in multi_az:
        table.add_column(f"AZ\n{az}", justify="right")
    table.add_column("all", justify="right", style="bold")
    for metric, values in m.items():
        cells = [values["by_elb_node"].get(n) for n in nodes] + [values["by_az"].get(az) for az in multi_az]
        cells.append(values["all"])
        if metric == "Latency":
            table.add_row("Latency (ms)", *("-" if v is None else f"{v * 1000:.2f}" for v in cells))
        else:
            table.add_row(metric, *(_fmt(v) for v in cells))
    return table


def errors_line(record: dict[str, Any]) -> Table | str:
    from rich.table import Table  # imported at use for start-up speed

    bce = record["elb"]["backend_connection_errors"]
    title = (
        f"BackendConnectionErrors: {bce['health_check']} health check, {bce['traffic']} traffic "
        f"({bce['attempts']} connect attempts, {bce['refused']} refused)"
    )
    rows = [(e, i, n) for e, per in bce["by_elb_node_and_instance"].items() for i, n in per.items() if n]
    if not rows:
        return title
    table = Table(title=title, title_justify="left")
    for col in ("ELB node", "instance", "errors"):
        table.add_column(col, justify="right" if col == "errors" else "left")
    for e, i, n in rows:
        table.add_row(e, i, str(n))
    return table


def node_rows() -> list[tuple[str, Any]]:
    """(label, cell of a node's interval) for the nodes table: the recorder's TCP counters, whatever they are."""
    from lab.metrics.node import NODE_TCP  # imported at use for start-up speed

    return [
        ("conntrack entries", lambda v: f"{v['conntrack']['count']}/{v['conntrack']['max']}"),
        ("conntrack fill %", lambda v: f"{v['conntrack']['fill'] * 100:.2f}"),
        *[
            (k, (lambda key: lambda v: str(v["conntrack_stats"][key]))(k))
            for k in ("insert_failed", "drop", "early_drop", "invalid")
        ],
        *[(k, (lambda key: lambda v: str(v["tcp"].get(key, "-")))(k)) for k in NODE_TCP],
        (
            "KUBE-SVC/SVL packets",
            lambda v: str(sum(n for k, n in v["kube_chains"].items() if "/KUBE-SVC-" in k or "/KUBE-SVL-" in k)),
        ),
    ]


def nodes_table(record: dict[str, Any]) -> Table | None:
    from rich.table import Table  # imported at use for start-up speed

    nodes = record.get("nodes") or {}
    if not nodes:
        return None
    table = Table(title="Nodes (counters: increase in the interval)", title_justify="left")
    table.add_column("")
    for node in nodes:
        table.add_column(node, justify="right")
    for label, cell in node_rows():
        table.add_row(label, *(cell(v) for v in nodes.values()))
    return table


def client_table(client: dict[str, Any] | None, title: str = "Client") -> Table | None:
    from rich.table import Table  # imported at use for start-up speed

    if not client:
        return None
    table = Table(title=f"{title}: {client['requests']} requests ({client['rate']}/s)", title_justify="left")
    for col in (
        "ok",
        "connect-timeout",
        "connect-refused",
        "reset",
        "read-timeout",
        "other",
        "p50 ms",
        "p99 ms",
        "max ms",
    ):
        table.add_column(col, justify="right")
    lat = client["latency"]
    table.add_row(
        *(
            str(client["outcomes"].get(k, 0))
            for k in ("ok", "connect-timeout", "connect-refused", "reset", "read-timeout", "other")
        ),
        *(f"{lat[k]:.2f}" if lat.get("count") else "-" for k in ("p50_ms", "p99_ms", "max_ms")),
    )
    return table


def record_view(record: dict[str, Any], header: dict[str, Any], client: dict[str, Any] | None = None) -> Group:
    from rich.console import Group  # imported at use for start-up speed

    parts = [
        elb_table(record, header),
        errors_line(record),
        nodes_table(record),
        client_table(client or record.get("client")),
    ]
    return Group(*[p for p in parts if p is not None])


@command(
    "metrics",
    epilog="Examples:\n\n  lab metrics --interval 10\n\n  lab metrics -i 5 --watch --record idle.jsonl\n\n"
    "  lab metrics -i 5 --json\n\n  lab metrics -i 5 --prometheus",
)
def metrics_cmd(
    interval: str = duration_option("60s", "Interval length (1s-1h; CloudWatch: 1m)", "--interval", "-i"),
    watch: bool = typer.Option(False, "--watch", "-w", help="Keep going: one table set per interval until Ctrl-C."),
    record: Path = typer.Option(None, "--record", help="Also write the time series (JSON lines) to FILE."),
    nodes: bool = typer.Option(True, "--nodes/--no-nodes", help="Sample node counters too."),
    prometheus: bool = typer.Option(False, "--prometheus", help="Print Prometheus text exposition instead."),
    json_out: bool = JsonOpt,
    name: str = NameOpt,
) -> None:
    """Measure the lab over one interval (or every interval with --watch) and show the ELB, node and client metrics.

    --json prints the interval as JSON (with --watch: one line per interval)."""
    from lab.lab import Lab  # imported at use for start-up speed
    from lab.metrics import recorder
    from lab.metrics.exposition import to_prometheus

    interval = recorder.check_interval(seconds(interval, "--interval"))
    lab = Lab.load(lab_name(name))
    spinner = not json_out and not prometheus and sys.stderr.isatty() and err_console().is_terminal
    with contextlib.closing(recorder.watch(lab, interval, record, nodes, note="lab metrics")) as intervals:
        while True:
            with (
                err_console().status(f"measuring one {interval:g}s interval (Ctrl-C to stop)")
                if spinner
                else contextlib.nullcontext()
            ):
                header, r = next(intervals)
            if json_out and watch:  # one compact line per interval: JSON Lines for a pipe
                sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
                sys.stdout.flush()
            elif json_out:
                print_json(r)
            elif prometheus:
                sys.stdout.write(to_prometheus(header, r))
                sys.stdout.flush()
            else:
                _console().print(record_view(r, header))
            if not watch:
                break


@command(
    "top",
    epilog="Examples:\n\n  lab top\n\n  lab top --interval 2\n\n"
    "  (and in another terminal: lab load accounts --rate 500 --duration 2m)",
)
def top_cmd(
    interval: str = duration_option("5s", "Refresh interval (>= 1s)", "--interval", "-i"),
    count: int = typer.Option(0, "--count", help="Stop after this many intervals (0: until Ctrl-C)."),
    name: str = NameOpt,
    json_out: bool = typer.Option(
        False, "--json", help="One JSON line per interval (the live view's data, with the running loads' clients)."
    ),
) -> None:
    """A live view: ELB metrics per ELB node and AZ, node conntrack fill, and the client outcomes of running loads."""
    from rich.console import Group  # imported at use for start-up speed
    from rich.live import Live

    from lab.lab import Lab
    from lab.metrics import recorder
    from lab.metrics.session import live_clients

    interval = recorder.check_interval(seconds(interval, "--interval"))
    lab = Lab.load(lab_name(name))
    shown = 0
    with (
        contextlib.closing(recorder.watch(lab, interval, None, True, note="lab top")) as intervals,
        contextlib.suppress(KeyboardInterrupt),
    ):
        if json_out:
            for _header, r in intervals:
                sys.stdout.write(json.dumps({**r, "live_clients": live_clients(lab)}, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                shown += 1
                if count and shown >= count:
                    break
            return
        console = _console()
        with Live(console=console, refresh_per_second=2, screen=console.is_terminal and count == 0) as live:
            live.update(f"lab top {lab.name}: first interval in {interval:g}s (Ctrl-C to quit)")
            for header, r in intervals:
                title = f"lab top {lab.name} ({time.strftime('%H:%M:%S')}, every {interval:g}s; Ctrl-C to quit)"
                live.update(Group(title, record_view(r, header, live_clients(lab))))
                shown += 1
                if count and shown >= count:
                    break


@command(
    "plot",
    epilog="Examples:\n\n  lab plot run.jsonl -o run.png\n\n"
    "  lab plot run.jsonl -o run.svg --title 'idle, 3 instances'",
)
def plot_cmd(
    run: Path = typer.Argument(..., help="A time series recorded by `lab load --record` or `lab metrics --record`."),
    out: Path = output_option("Image to write (.png, .svg, .pdf).", required=True),
    title: str = typer.Option(None, "--title", help="Title (default: the lab and its settings)."),
    json_out: bool = JsonOpt,
) -> None:
    """Draw BackendConnectionErrors and RequestCount over time (like the seed's ELB graphs) and client latency."""
    from lab.metrics.plot import plot_run

    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--output {out}: use a .png, .svg or .pdf file name")
    if not run.is_file():
        raise InputError(f"{run}: no such file; record a run with `lab load ... --record {run}`")
    info = plot_run(run, out, title)
    if json_out:
        print_json(info)
    else:
        _console().print(
            f"wrote {info['out']}: {info['intervals']} intervals" + (", client latency" if info["client"] else "")
        )


__all__ = ["metrics_cmd", "top_cmd", "plot_cmd"]
