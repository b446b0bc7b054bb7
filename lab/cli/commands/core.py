"""Lab lifecycle commands: up, down, status, clean, call, exec, schema, demo."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import typer
from rich.table import Table

from lab import lifecycle, rpc
from lab.cli.app import command, console, err_console, fail, print_json, progress
from lab.errors import InputError
from lab.lab import Lab, default_lab_name

DEFAULT_TOPOLOGY = Path("topologies/default.yaml")

NameOpt = typer.Option(None, "--name", "-n", help="Lab name (default: the one lab that is up, else 'default').")
JsonOpt = typer.Option(False, "--json", help="Print JSON for machines.")


def _topology_path(path: Path | None) -> Path:
    if path is not None:
        return path
    if DEFAULT_TOPOLOGY.exists():
        return DEFAULT_TOPOLOGY
    return Path(__file__).resolve().parents[3] / "topologies" / "default.yaml"


@command(
    "up",
    epilog="Examples:\n\n  lab up\n\n"
    "  lab up -t topologies/seed-2017.yaml --set nodes_per_az=3 --set elb.cross_zone=true\n\n"
    "  lab up --name second --dry-run",
)
def up_cmd(
    topology: Path = typer.Option(None, "--topology", "-t", help="Topology YAML (default: topologies/default.yaml)."),
    name: str = typer.Option(None, "--name", "-n", help="Lab name (default: the topology's name)."),
    overrides: list[str] = typer.Option([], "--set", help="Override a topology field: KEY=VALUE (repeatable)."),
    backend: str = typer.Option("netns", "--backend", "-b", help="netns (default) or kind."),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Shrink the ELB's timers (0 < F <= 1) for quick runs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print everything that would be created and applied."),
    json_out: bool = JsonOpt,
) -> None:
    """Bring a lab up from a topology file."""
    lab = lifecycle.prepare(_topology_path(topology), name, overrides, backend, time_scale)
    if dry_run:
        sys.stdout.write(lab.backend.plan_text(lab))
        return
    with progress(f"lab up {lab.name}", quiet=json_out) as step:
        result = lifecycle.up(lab, step)
    if json_out:
        print_json(result)
        return
    topo = lab.topology
    console.print(
        f"lab '{lab.name}' is up in {result['seconds']:.2f}s: {len(topo.elb_nodes)} ELB nodes, "
        f"{len(topo.k8s_nodes)} nodes, {len(topo.pods)} pods, {len(topo.services)} services "
        f"(kube-proxy {topo.kube_proxy.flavour}, cross-zone {'on' if topo.elb.cross_zone else 'off'})"
    )
    console.print(
        f"next: lab status -n {lab.name}   lab call {topo.services[0].name} whoami -n {lab.name}   "
        f"lab down -n {lab.name}"
    )


@command("down", epilog="Example:\n\n  lab down --name default")
def down_cmd(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """Tear a lab down: its processes, namespaces and state (idempotent)."""
    lab_name = name or default_lab_name()
    result = lifecycle.down(lab_name)
    if json_out:
        print_json(result)
    elif not result["was_up"]:
        console.print(f"lab '{lab_name}' is not up; nothing to do")
    else:
        console.print(
            f"lab '{lab_name}' is down ({len(result['removed'])} namespaces removed in {result['seconds']:.2f}s)"
        )


@command("clean", epilog="Examples:\n\n  lab clean\n\n  lab clean --name seed")
def clean_cmd(
    names: list[str] = typer.Option(None, "--name", "-n", help="Only this lab (repeatable); default: every lab."),
    json_out: bool = JsonOpt,
) -> None:
    """Remove every lab and every leftover of crashed runs (only what the lab can prove it created)."""
    results = lifecycle.clean(names or None)
    if json_out:
        print_json(results)
        return
    if not results:
        console.print("nothing to clean")
    for r in results:
        console.print(f"removed lab '{r['name']}' ({len(r['removed'])} namespaces)")


@command("status", epilog="Examples:\n\n  lab status\n\n  lab status --name seed --json")
def status_cmd(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """Hosts, processes, and each ELB node's view of each instance (InService / OutOfService)."""
    info = lifecycle.status(name or default_lab_name())
    if json_out:
        print_json(info)
        return
    roles: dict[str, list[str]] = {}
    for h in info["hosts"]:
        roles.setdefault(h["role"], []).append(h["name"] + ("" if h["present"] else " (MISSING)"))
    console.print(
        f"lab '{info['name']}' ({info['backend']}): {info['status']}, kube-proxy {info['kube_proxy']}, "
        f"cross-zone {'on' if info['cross_zone'] else 'off'}"
        + (f", ELB timers x{info['time_scale']:g}" if info["time_scale"] != 1 else "")
    )
    for role in ("client", "elb", "node", "pod", "router"):
        if role in roles:
            console.print(f"  {role + 's':8} {', '.join(roles[role])}")
    procs = info.get("processes", [])
    bad = [p for p in procs if p["state"] != "running" or not p["ready"]]
    console.print(
        f"  processes {len(procs) - len(bad)}/{len(procs)} running"
        + (f"; {info['problem']}" if info.get("problem") else "")
    )
    for p in bad:
        console.print(f"    {p['name']}: {p['state']} (restarts {p['restarts']}, exit {p['exit_code']})")
    active = info.get("faults", [])
    console.print(f"  faults    {len(active)} active" + (" (lab fault status)" if active else ""))
    for f in active:
        console.print(f"    {f['id']}: {f['kind']} on {f['target']} ({f['params_text']})")
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
    console.print(table)


@command(
    "call",
    epilog="Examples:\n\n  lab call accounts whoami\n\n  lab call catalog echo 1024 --via node --target node-c1\n\n"
    "  lab call accounts work 250 --via pod --json",
)
def call_cmd(
    service: str = typer.Argument(..., help="Service name, e.g. accounts."),
    method: str = typer.Argument(..., help="ping | echo SIZE|TEXT | work MS | whoami"),
    args: list[str] = typer.Argument(None, help="Method arguments."),
    via: str = typer.Option("elb", "--via", help="elb (default), node (its NodePort) or pod (from the pod's node)."),
    target: str = typer.Option(
        None, "--target", help="Which ELB node / node / pod (default: random, like DNS round robin)."
    ),
    source: str = typer.Option(None, "--from", help="Host to call from (default: the client tier)."),
    timeout: float = typer.Option(5.0, "--timeout", help="Connect and RPC timeout in seconds."),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make one Thrift RPC through the lab and show where it went."""
    lab = Lab.load(name or default_lab_name())
    tgt = rpc.resolve(lab, service, via, target, source)
    result = rpc.call(lab, service, method, args or [], tgt, timeout)
    if json_out:
        print_json(result)
        return
    console.print(
        f"{result['method']} -> {service} {result['from']} -> {result['to']} ({result['address']}, via {via}): "
        f"connect {result['connect_ms']:.2f} ms, rpc {result['rpc_ms']:.2f} ms"
    )
    console.print(json.dumps(result["result"], default=str))


@command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Examples:\n\n  lab exec node-a1 -- iptables-save -t nat\n\n  lab exec node-b1 -- conntrack -L\n\n"
    "  lab exec apollo-1 -- ss -tn",
)
def exec_cmd(
    ctx: typer.Context,
    host: str = typer.Argument(..., help="Lab host (see `lab status`)."),
    name: str = NameOpt,
) -> None:
    """Run a command inside a lab host's network namespace."""
    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise InputError("no command given; usage: lab exec HOST -- CMD [ARGS...]")
    lab = Lab.load(name or default_lab_name())
    h = lab.host(host)
    if shutil.which(argv[0]) is None:
        raise InputError(f"command not found: {argv[0]}")
    sys.stdout.flush()
    os.execvp("nsenter", h.argv(argv))


@command("schema", epilog="Example:\n\n  lab schema topology > topology.schema.json")
def schema_cmd(kind: str = typer.Argument("topology", help="topology, scenario or incident")) -> None:
    """Print the JSON Schema of a declarative file."""
    from lab.models import schemas

    if kind not in schemas.SCHEMAS:
        fail(f"unknown schema {kind!r}; choose one of: {', '.join(schemas.SCHEMAS)}")
    print_json(schemas.SCHEMAS[kind]())


@command("demo", epilog="Examples:\n\n  lab demo\n\n  lab demo --tour-only -t topologies/seed-2017.yaml")
def demo_cmd(
    name: str = typer.Option("demo", "--name", "-n", help="Lab name for the tour."),
    topology: Path | None = typer.Option(
        None, "--topology", "-t", help="Topology for the tour (default: topologies/default.yaml)."
    ),
    tour_only: bool = typer.Option(False, "--tour-only", help="Only the tour of the path, not the matrix."),
    report_dir: Path = typer.Option(Path("reports/demo"), "--report", help="Where the matrix writes its reports."),
) -> None:
    """The main job: a tour of the path (the default lab up, an RPC through every listener and ELB node,
    status, down), then the quick matrix of every hypothesis with the hypothesis x observation answer."""
    _tour(name, topology)
    if tour_only:
        return
    from lab.cli.commands.scenario import finish_matrix
    from lab.scenarios.matrix import run_matrix

    with progress("lab matrix --all --quick") as step:
        results = run_matrix([], True, [], report_dir, quick=True, progress=step)
    finish_matrix(results, json_out=False)


def _tour(name: str, topology: Path | None) -> None:
    lab = lifecycle.prepare(_topology_path(topology), name)
    with progress(f"lab up {lab.name}") as step:
        result = lifecycle.up(lab, step)
    try:
        console.print(f"[bold]lab '{lab.name}' up in {result['seconds']:.2f}s[/]")
        table = Table(title="whoami through every ELB listener and ELB node", title_justify="left")
        for col in ("listener", "ELB node", "instance -> pod (node, AZ)", "pod saw client", "connect ms"):
            table.add_column(col)
        for listener in lab.topology.elb.listeners:
            for elb in lab.topology.elb_nodes:
                tgt = rpc.resolve(lab, listener.service, "elb", elb.name)
                r = rpc.call(lab, listener.service, "whoami", [], tgt)
                who = r["result"]
                table.add_row(
                    f":{listener.port} {listener.service}",
                    elb.name,
                    f"{who['pod']} ({who['node']}, {who['az']})",
                    str(who["client_ip"]),
                    f"{r['connect_ms']:.2f}",
                )
        console.print(table)
        status_cmd(name=lab.name, json_out=False)
    finally:
        with progress(f"lab down {lab.name}") as step:
            step("removing")
            down = lifecycle.down(lab.name)
        err_console.print(f"lab '{lab.name}' down in {down.get('seconds', 0):.2f}s")
