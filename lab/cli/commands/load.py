"""`lab load`: open-loop Thrift load through the lab, with live progress and a JSON result.

The library is imported inside each function (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from lab.cli.app import command, err_console, print_json
from lab.cli.app import console as _console
from lab.cli.options import JsonOpt, NameOpt, OutputOpt, duration_option, lab_name, seconds

if TYPE_CHECKING:
    from rich.table import Table

    from lab.load import ClientSlice, LoadRun

EXAMPLES = (
    "Examples:\n\n  lab load accounts --rate 500 --duration 30s\n\n"
    "  lab load accounts --rate 200 --duration 60 --connections per-request --json --output result.json\n\n"
    "  lab load catalog --rate 100 --rate-end 2000 --duration 2m --record run.jsonl --interval 5s\n\n"
    "  lab load accounts --rate 1000 --duration 10 --via pod --target accounts-0 --timeout 500ms"
)


def _slice_line(s: ClientSlice) -> str:
    d = s.to_dict()
    bad = {k: v for k, v in d["outcomes"].items() if k != "ok" and v}
    lat = d["latency"]
    p50 = f"{lat['p50_ms']:.2f}" if lat.get("count") else "-"
    p99 = f"{lat['p99_ms']:.2f}" if lat.get("count") else "-"
    return f"{d['requests']:>6} req/s  ok {d['outcomes']['ok']:>6}  p50 {p50} ms  p99 {p99} ms" + (
        f"  errors {json.dumps(bad)}" if bad else ""
    )


def result_table(d: dict[str, Any]) -> Table:
    from rich.table import Table  # imported at use for start-up speed

    spec = d["spec"]
    table = Table(
        title=f"lab load {spec['service']} via {spec['via']} ({spec['connections']}): {d['requests']} requests in "
        f"{d['seconds']:.1f}s = {d['achieved_rate']:.0f}/s, ok {d['ok_ratio'] * 100:.3f}%"
        + (" (interrupted: partial result)" if d["interrupted"] else ""),
        title_justify="left",
    )
    table.add_column("ms")
    for col in ("count", "p50", "p90", "p99", "p99.9", "max"):
        table.add_column(col, justify="right")
    for name, h in d["histograms_ms"].items():
        if not h.get("count"):
            table.add_row(name, "0", "-", "-", "-", "-", "-")
            continue
        table.add_row(
            name,
            str(h["count"]),
            *(f"{h[k]:.3f}" for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")),
        )
    return table


def _latency_bands(d: dict[str, Any]) -> dict[str, int] | None:
    from lab.load.stats import bands, decode_into, new_histogram, slow_calls  # imported at use for start-up speed

    encoded = d.get("hdr", {}).get("latency")
    if not encoded:
        return None
    h = new_histogram()
    decode_into(h, encoded)
    counts = bands(h)
    return counts if slow_calls(counts) else None


def print_result(d: dict[str, Any]) -> None:
    from lab.load import OUTCOMES  # imported at use for start-up speed

    console = _console()
    console.print(result_table(d))
    outcomes = "  ".join(f"{k} {d['outcomes'][k]}" for k in OUTCOMES)
    console.print(f"outcomes: {outcomes}")
    if d["details"]:
        console.print("details: " + ", ".join(f"{k} {v}" for k, v in sorted(d["details"].items())))
    slow = _latency_bands(d)
    if slow:  # only when some call took a SYN retransmit or longer: 1 s / 3 s steps are a dropped SYN's mark
        console.print("latency histogram: " + ", ".join(f"{band} {n}" for band, n in slow.items()))
    extra = []
    if d["unfinished"]:
        extra.append(f"{d['unfinished']} in flight when stopped")
    if d["not_sent"]:
        extra.append(f"{d['not_sent']} scheduled but not sent")
    if extra:
        console.print("; ".join(extra))
    for e in d["errors"]:
        console.print(f"[red]{e}[/]")
    for reason in d.get("limited_reasons", []):
        console.print(f"[yellow]Warning: lab-limited: {reason}; these figures measure this machine, not the path[/]")


@command("load", epilog=EXAMPLES)
def load_cmd(
    service: str = typer.Argument(..., help="Service to call, e.g. accounts."),
    rate: float = typer.Option(..., "--rate", "-r", help="Requests per second (open loop)."),
    duration: str = duration_option(..., "How long", "--duration", "-d"),
    rate_end: float = typer.Option(None, "--rate-end", help="Ramp linearly from --rate to this rate."),
    connections: str = typer.Option("pooled", "--connections", "-c", help="pooled (reused) or per-request."),
    pool: int = typer.Option(16, "--pool", help="Pooled connections in total."),
    connect_timeout: str = duration_option("1s", "Connect timeout", "--connect-timeout"),
    timeout: str = duration_option("2s", "RPC timeout once connected", "--timeout"),
    method: str = typer.Option("ping", "--method", "-m", help="ping | echo | work."),
    payload: int = typer.Option(0, "--payload", help="echo: payload bytes; work: milliseconds of work."),
    via: str = typer.Option("elb", "--via", help="elb (default), node (NodePorts) or pod."),
    target: str = typer.Option(None, "--target", help="Only this ELB node / node / pod (default: all, round robin)."),
    source: str = typer.Option(None, "--from", help="Host to send from (default: the client tier; pods: their node)."),
    workers: int = typer.Option(None, "--workers", help="Worker processes (default: one per 3,000 req/s)."),
    json_out: bool = JsonOpt,
    output: Path = OutputOpt,
    record: Path = typer.Option(None, "--record", help="Also record ELB, node and client metrics to RUN.jsonl."),
    interval: str = duration_option("60s", "Recording interval (>= 1s)", "--interval", "-i"),
    name: str = NameOpt,
) -> None:
    """Send open-loop Thrift load through the lab and report outcomes and latency (HDR histograms)."""
    from lab.lab import Lab  # imported at use for start-up speed
    from lab.load import LoadSpec
    from lab.metrics.session import run_session

    spec = LoadSpec(
        service=service,
        rate=rate,
        duration=seconds(duration, "--duration"),
        rate_end=rate_end,
        connections=connections,
        pool=pool,
        connect_timeout=seconds(connect_timeout, "--connect-timeout"),
        timeout=seconds(timeout, "--timeout"),
        method=method,
        payload=payload,
        via=via,
        target=target,
        source=source,
        workers=workers,
    )
    spec.validate()  # bad numbers fail before the lab is even looked at
    interval_s = seconds(interval, "--interval")
    if record is not None:
        from lab.metrics.recorder import check_interval

        check_interval(interval_s)
    lab = Lab.load(lab_name(name))
    session = run_session(lab, spec, output, record, interval_s, follow=None if json_out else _follow)
    data = session.to_dict()
    if json_out:
        print_json(data)
    else:
        print_result(data)
        if session.summary_file is not None:
            _console().print(f"JSON result: {session.summary_file} (per second: {session.per_second_file})")
        if record is not None:
            _console().print(f"recorded: {record} (plot it: lab plot {record} -o run.png)")
    if session.interrupted:
        print("Interrupted: partial result above; every load worker has exited.", file=sys.stderr, flush=True)
        raise typer.Exit(130)


def _follow(run: LoadRun) -> None:
    """Show progress while the run goes: a live line on a terminal, a line every 5 s otherwise."""
    spec = run.spec
    started = time.monotonic()
    if sys.stderr.isatty() and err_console().is_terminal:
        from rich.live import Live  # imported at use for start-up speed

        with Live(console=err_console(), refresh_per_second=4, transient=True) as live:
            for s in run.slices():
                left = max(0.0, spec.duration - (time.monotonic() - started))
                live.update(f"[bold]lab load[/] {spec.service}: {_slice_line(s)}  ({left:.0f}s left)")
        return
    last = 0.0
    for s in run.slices():
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            print(f"lab load {spec.service}: {_slice_line(s)}", file=sys.stderr, flush=True)
