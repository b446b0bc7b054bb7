"""Lab lifecycle commands: up, down, status, clean, call, exec, schema, demo.

The library is imported inside each command (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperCommand

from lab.cli.app import command, print_json, progress, say
from lab.cli.options import (
    BackendOpt,
    FromOpt,
    JsonOpt,
    NameOpt,
    SetOpt,
    TimeoutOpt,
    TimeScaleOpt,
    TopologyOpt,
    ViaOpt,
    lab_name,
    name_option,
    seconds,
    topology_option,
)
from lab.errors import InputError


@command(
    "up",
    epilog="Examples:\n\n  lab up\n\n"
    "  lab up -t topologies/seed-2017.yaml --set nodes_per_az=3 --set elb.cross_zone=true\n\n"
    "  lab up --name second --dry-run\n\n  lab up --dry-run --json",
)
def up_cmd(
    topology: Path = TopologyOpt,
    name: str = name_option("Lab name (default: $LAB_NAME if set, else the topology's name)."),
    overrides: list[str] = SetOpt,
    backend: str = BackendOpt,
    time_scale: float = TimeScaleOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print everything that would be created and applied."),
    json_out: bool = JsonOpt,
) -> None:
    """Bring a lab up from a topology file."""
    from lab import lifecycle  # imported at use for start-up speed
    from lab.lab import env_lab_name
    from lab.spec import default_topology_path

    path = topology or default_topology_path()
    lab = lifecycle.prepare(path, name or env_lab_name(), overrides, backend, time_scale)
    if dry_run:
        if json_out:
            print_json(lifecycle.dry_run(lab))
        else:
            sys.stdout.write(lab.backend.plan_text(lab))
        return
    with progress(f"lab up {lab.name}", quiet=json_out) as step:
        result = lifecycle.up(lab, step)
    if json_out:
        print_json(result)
        return
    topo = lab.topology
    say(
        f"lab '{lab.name}' is up in {result['seconds']:.2f}s: {len(topo.elb_nodes)} ELB nodes, "
        f"{len(topo.k8s_nodes)} nodes, {len(topo.pods)} pods, {len(topo.services)} services "
        f"(kube-proxy {topo.kube_proxy.flavour}, cross-zone {'on' if topo.elb.cross_zone else 'off'})"
    )
    say(
        f"next: lab status -n {lab.name}   lab call {topo.services[0].name} whoami -n {lab.name}   "
        f"lab down -n {lab.name}"
    )


@command("down", epilog="Examples:\n\n  lab down\n\n  lab down --name seed --json")
def down_cmd(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """Tear a lab down: its processes, namespaces and state (idempotent)."""
    from lab import lifecycle  # imported at use for start-up speed

    result = lifecycle.down(lab_name(name))
    if json_out:
        print_json(result)
    elif not result["was_up"]:
        say(f"lab '{result['name']}' is not up; nothing to do")
    else:
        say(f"lab '{result['name']}' is down ({len(result['removed'])} namespaces removed in {result['seconds']:.2f}s)")


@command("clean", epilog="Examples:\n\n  lab clean --name seed\n\n  lab clean")
def clean_cmd(
    names: list[str] = typer.Option(
        None, "--name", "-n", metavar="NAME", help="Only this lab (repeatable); without it: EVERY lab."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Remove every lab (or only the named ones) and every leftover of crashed runs (only what the lab can
    prove it created)."""
    from lab import lifecycle  # imported at use for start-up speed

    results = lifecycle.clean(names or None)
    if json_out:
        print_json(results)
        return
    if not results:
        say("nothing to clean")
    for r in results:
        say(f"removed lab '{r['name']}' ({len(r['removed'])} namespaces)")


@command("status", epilog="Examples:\n\n  lab status\n\n  lab status --name seed --json")
def status_cmd(name: str = NameOpt, json_out: bool = JsonOpt) -> None:
    """Hosts, processes, and each ELB node's view of each instance (InService / OutOfService)."""
    from lab import lifecycle  # imported at use for start-up speed
    from lab.cli.views import print_status

    info = lifecycle.status(lab_name(name))
    if json_out:
        print_json(info)
    else:
        print_status(info)


@command(
    "call",
    epilog="Examples:\n\n  lab call accounts whoami\n\n  lab call catalog echo 1024 --via node --target node-c1\n\n"
    "  lab call accounts work 250 --via pod --timeout 500ms --json",
)
def call_cmd(
    service: str = typer.Argument(..., help="Service name, e.g. accounts."),
    method: str = typer.Argument(..., help="ping | echo SIZE|TEXT | work MS | whoami"),
    args: list[str] = typer.Argument(None, help="Method arguments."),
    via: str = ViaOpt,
    target: str = typer.Option(
        None, "--target", help="Which ELB node / node / pod (default: random, like DNS round robin)."
    ),
    source: str = FromOpt,
    timeout: str = TimeoutOpt,
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make one Thrift RPC through the lab and show where it went."""
    import json  # imported at use for start-up speed

    from lab import rpc
    from lab.lab import Lab

    timeout_s = seconds(timeout, "--timeout")
    lab = Lab.load(lab_name(name))
    result = rpc.call(lab, service, method, args or [], rpc.resolve(lab, service, via, target, source), timeout_s)
    if json_out:
        print_json(result)
        return
    say(
        f"{result['method']} -> {service} {result['from']} -> {result['to']} ({result['address']}, via {via}): "
        f"connect {result['connect_ms']:.2f} ms, rpc {result['rpc_ms']:.2f} ms"
    )
    say(json.dumps(result["result"], default=str))  # plain: JSON's brackets are not markup


class _ExecUsage(TyperCommand):
    """`lab exec`'s usage line shows the `--` before the command (everything after it is the command's)."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return ["[OPTIONS]", "HOST", "-- COMMAND [ARGS]..."]


@command(
    "exec",
    cls=_ExecUsage,
    context_settings={"ignore_unknown_options": True},  # `lab exec node-a1 conntrack -L` works without `--` too
    epilog="Examples:\n\n  lab exec node-a1 -- iptables-save -t nat\n\n  lab exec node-b1 -- conntrack -L\n\n"
    "  lab exec apollo-1 -n seed -- ss -tn\n\n  lab exec node-a1 --json -- conntrack -C",
)
def exec_cmd(
    host: str = typer.Argument(..., metavar="HOST", help="Lab host (see `lab status`)."),
    argv: list[str] = typer.Argument(
        ..., metavar="-- COMMAND [ARGS]", help="The command to run in the host's namespace, after `--`."
    ),
    name: str = NameOpt,
    json_out: bool = typer.Option(
        False, "--json", help="Capture the command's exit code, stdout and stderr as JSON (it replaces lab otherwise)."
    ),
) -> None:
    """Run a command inside a lab host's network namespace."""
    import os  # imported at use for start-up speed
    import shutil
    import subprocess

    from lab.lab import Lab

    h = Lab.load(lab_name(name)).host(host)
    if shutil.which(argv[0]) is None:
        raise InputError(f"command not found: {argv[0]}")
    if json_out:
        done = subprocess.run(h.argv(argv), capture_output=True, text=True, errors="replace")
        print_json(
            {"host": host, "argv": argv, "exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        )
        return
    sys.stdout.flush()
    os.execvp("nsenter", h.argv(argv))


@command("schema", epilog="Examples:\n\n  lab schema topology > topology.schema.json\n\n  lab schema scenario")
def schema_cmd(
    kind: str = typer.Argument("topology", help="topology, scenario or incident"),
    json_out: bool = typer.Option(False, "--json", help="The schema is JSON anyway; errors become JSON too."),
) -> None:
    """Print the JSON Schema of a declarative file."""
    from lab.models import schemas  # imported at use for start-up speed

    if kind not in schemas.SCHEMAS:
        raise InputError(f"unknown schema {kind!r}; choose one of: {', '.join(schemas.SCHEMAS)}")
    print_json(schemas.SCHEMAS[kind]())


@command("demo", epilog="Examples:\n\n  lab demo\n\n  lab demo --tour-only -t topologies/seed-2017.yaml")
def demo_cmd(
    name: str = name_option("Lab name for the tour.", default="demo"),
    topology: Path | None = topology_option("Topology for the tour (default: topologies/default.yaml)."),
    tour_only: bool = typer.Option(False, "--tour-only", help="Only the tour of the path, not the matrix."),
    report_dir: Path = typer.Option(
        Path("reports/demo"), "--report", metavar="DIR", help="Where the matrix writes its reports."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """The main job: a tour of the path (the default lab up, an RPC through every listener and ELB node,
    status, down), then the quick matrix of every hypothesis with the hypothesis x observation answer."""
    from lab.cli.views import finish_matrix, print_tour  # imported at use for start-up speed
    from lab.scenarios.matrix import run_matrix
    from lab.spec import default_topology_path
    from lab.tour import tour

    with progress(f"lab demo {name}: the tour", quiet=json_out) as step:
        toured = tour(topology or default_topology_path(), name, step)
    if not json_out:
        print_tour(toured)
    if tour_only:
        if json_out:
            print_json({"tour": toured})
        return
    with progress("lab matrix --all --quick", quiet=json_out) as step:
        results = run_matrix([], use_all=True, report_dir=report_dir, quick=True, progress=step)
    if json_out:
        print_json({"tour": toured, "matrix": results})
        if any(s["status"] != "passed" for s in results["scenarios"]):
            raise typer.Exit(1)
        return
    finish_matrix(results, json_out=False)
