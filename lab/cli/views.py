"""Views that several commands print: a lab's status, the tour's calls, the hypothesis x observation table."""

from __future__ import annotations

from typing import Any

import typer

from lab.cli.app import console, print_json


def print_status(info: dict[str, Any]) -> None:
    """`lab status`: hosts by role, processes, active faults, and each ELB node's view of each instance."""
    from rich.table import Table  # imported at use for start-up speed

    out = console()
    roles: dict[str, list[str]] = {}
    for h in info["hosts"]:
        roles.setdefault(h["role"], []).append(h["name"] + ("" if h["present"] else " (MISSING)"))
    out.print(
        f"lab '{info['name']}' ({info['backend']}): {info['status']}, kube-proxy {info['kube_proxy']}, "
        f"cross-zone {'on' if info['cross_zone'] else 'off'}"
        + (f", ELB timers x{info['time_scale']:g}" if info["time_scale"] != 1 else "")
    )
    for role in ("client", "elb", "node", "pod", "router"):
        if role in roles:
            out.print(f"  {role + 's':8} {', '.join(roles[role])}")
    procs = info.get("processes", [])
    bad = [p for p in procs if p["state"] != "running" or not p["ready"]]
    out.print(
        f"  processes {len(procs) - len(bad)}/{len(procs)} running"
        + (f"; {info['problem']}" if info.get("problem") else "")
    )
    for p in bad:
        out.print(f"    {p['name']}: {p['state']} (restarts {p['restarts']}, exit {p['exit_code']})")
    active = info.get("faults", [])
    out.print(f"  faults    {len(active)} active" + (" (lab fault status)" if active else ""))
    for f in active:
        out.print(f"    {f['id']}: {f['kind']} on {f['target']} ({f['params_text']})")
    instances = sorted({i for e in info["elb"] for i in e["instances"]})
    table = Table(title="ELB health (each ELB node's view)", title_justify="left")
    table.add_column("ELB node")
    for inst in instances:
        table.add_column(inst)
    for e in info["elb"]:
        cells = []
        for inst in instances:
            view = e["instances"].get(inst)
            if view is None:
                cells.append("-")
            else:
                style = "green" if view["state"] == "InService" else "red"
                cells.append(f"[{style}]{view['state']}[/] {view['status']}")
        table.add_row(f"{e['elb_node']} ({e['az']})", *cells)
    out.print(table)


def print_tour(tour: dict[str, Any]) -> None:
    """`lab demo`'s tour: the lab's start-up time, one whoami per ELB listener and ELB node, the status."""
    from rich.table import Table  # imported at use for start-up speed

    out = console()
    out.print(f"[bold]lab '{tour['name']}' up in {tour['up']['seconds']:.2f}s[/]")
    table = Table(title="whoami through every ELB listener and ELB node", title_justify="left")
    for col in ("listener", "ELB node", "instance -> pod (node, AZ)", "pod saw client", "connect ms"):
        table.add_column(col)
    for call in tour["calls"]:
        who = call["result"]
        table.add_row(
            f":{call['listener']} {call['service']}",
            call["elb_node"],
            f"{who['pod']} ({who['node']}, {who['az']})",
            str(who["client_ip"]),
            f"{call['connect_ms']:.2f}",
        )
    out.print(table)
    print_status(tour["status"])
    out.print(f"lab '{tour['name']}' down in {tour['down'].get('seconds', 0):.2f}s")


def finish_matrix(results: dict[str, Any], json_out: bool) -> None:
    """Print a matrix's results (the table, or JSON) and exit 1 when any scenario did not pass in every
    counted run, or planned runs are missing."""
    if json_out:
        print_json(results)
    else:
        print_matrix(results)
        console().print(f"reports: {results['files']['report.html']} (also report.md, junit.xml, results.json)")
    from lab.scenarios.report import answered  # imported at use for start-up speed

    if not answered(results):  # a failed verdict, an error, or runs missing (an interrupted run, a lost shard)
        raise typer.Exit(1)


def print_matrix(results: dict[str, Any]) -> None:
    """Which hypothesis reproduces which seed observation, then each failed expectation and error."""
    from rich.table import Table  # imported at use for start-up speed

    from lab.models.scenario import OBSERVATIONS
    from lab.scenarios import report

    out = console()
    table = Table(title="Which hypothesis reproduces which seed observation", title_justify="left")
    table.add_column("hypothesis (scenario)")
    for o in OBSERVATIONS:
        table.add_column(f"{o} {report.OBSERVATION_TEXT[o]}", overflow="fold")
    table.add_column("verdict")
    for row in report.table_rows(results):
        styled = []
        for c in row[1:-1]:
            style = {"YES": "green", "no": "red", "FLAKY": "yellow"}.get(c.split(" ")[0], "dim")
            styled.append(f"[{style}]{c}[/]")
        verdict = row[-1]
        table.add_row(row[0], *styled, f"[{'green' if verdict == 'passed' else 'red'}]{verdict}[/]")
    out.print(table)
    for word, text in report.problems(results):  # MISSING, FAILED (passed in k/N), ERROR
        out.print(f"[red]{word}[/] {text}")
