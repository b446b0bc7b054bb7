"""Teaching commands: trace (one connection, hop by hop), explain (the rules, statically), diagnose (a node).

The library is imported inside each command (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lab.cli.app import command, console, print_json, progress
from lab.cli.options import (
    JsonOpt,
    NameOpt,
    TimeoutOpt,
    duration_option,
    lab_name,
    seconds,
    set_option,
    topology_option,
)
from lab.errors import InputError


@command(
    "trace",
    epilog="Examples:\n\n  lab trace accounts\n\n  lab trace catalog --via node --target node-b1 --timeout 2s\n\n"
    "  lab trace accounts --target elb-a1 --diagram trace.svg --mermaid\n\n  lab trace accounts --json\n\n"
    "  lab trace accounts --save-evidence t.json   then, anywhere:  lab trace accounts --evidence t.json",
)
def trace_cmd(
    service: str = typer.Argument(..., help="Service to trace, e.g. accounts."),
    via: str = typer.Option("elb", "--via", help="elb (client -> ELB node -> NodePort) or node (a NodePort directly)."),
    target: str = typer.Option(
        None, "--target", help="Which ELB node (--via elb) or node (--via node); random if unset."
    ),
    source: str = typer.Option(None, "--from", help="Host the connection starts from (default: the client tier)."),
    timeout: str = TimeoutOpt,
    diagram: Path = typer.Option(None, "--diagram", help="Also draw the path and its AZs into this .svg or .png."),
    show_mermaid: bool = typer.Option(False, "--mermaid", help="Also print the path as a Mermaid flowchart."),
    save_to: Path = typer.Option(
        None, "--save-evidence", help="Also write everything the trace read to this JSON file (to share or replay)."
    ),
    evidence_in: Path = typer.Option(
        None, "--evidence", help="Tell a trace again from a file written by --save-evidence (no lab needed)."
    ),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Send ONE real connection and show every hop: ELB node, instance, kube-proxy rules, conntrack, pod, reply.

    A connection that fails is traced too (exit code 0: the trace worked); --json says "ok": false.
    """
    from lab.lab import Lab  # imported at use for start-up speed
    from lab.teach.diagram import mermaid, render_image, trace_json
    from lab.teach.hops import assemble
    from lab.teach.trace import load_evidence, resolve_target, save_evidence, trace_evidence
    from lab.teach.views import trace_tree

    timeout_s = seconds(timeout, "--timeout")
    if diagram is not None and diagram.suffix.lower() not in (".svg", ".png"):
        raise InputError(f"--diagram {diagram}: the file name must end in .svg or .png")
    if evidence_in is not None:
        evidence = load_evidence(evidence_in)  # told again from a recording: no lab, no traffic
        if evidence.service != service:
            raise InputError(f"--evidence {evidence_in}: it traced service '{evidence.service}', not '{service}'")
    else:
        lab = Lab.load(lab_name(name))
        tgt = resolve_target(lab, service, via, source, target)  # bad input fails here, before any traffic
        with progress(f"lab trace {service}", quiet=json_out) as step:
            step(f"tracing one connection: {tgt.describe()}")
            evidence = trace_evidence(lab, service, via, tgt.source.name, tgt.hop, timeout_s)
    if save_to is not None:
        save_evidence(evidence, save_to)
    result = assemble(evidence)
    if diagram is not None:
        render_image(result, diagram)
    if json_out:
        print_json(trace_json(result))
    else:
        console().print(trace_tree(result), soft_wrap=False)
        if show_mermaid:
            sys.stdout.write("\n" + mermaid(result))
        if diagram is not None:
            console().print(f"diagram: {diagram}")


@command(
    "explain",
    epilog="Examples:\n\n  lab explain\n\n  lab explain accounts --node node-a1\n\n"
    "  lab explain -t topologies/seed-2017.yaml --set services.accounts.external_traffic_policy=Local\n\n"
    "  lab explain catalog --json",
)
def explain_cmd(
    service: str = typer.Argument(None, help="Only this service (default: every service)."),
    topology: Path = topology_option("Explain this topology file; no lab needs to be up (default: the lab's)."),
    overrides: list[str] = set_option("Override a topology field: KEY=VALUE (with -t; repeatable)."),
    node: str = typer.Option(None, "--node", help="Only this node's rules."),
    brief: bool = typer.Option(False, "--brief", help="Summaries only, without the rules."),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Static walk-through: ELB listeners and health check, each node's KUBE-* rules in order, in plain words.

    Sends no traffic. Without -t it explains the lab (or topologies/default.yaml when no lab is named and the
    default lab is not up).
    """
    from lab.lifecycle import topology_of  # imported at use for start-up speed
    from lab.teach.explain import explain
    from lab.teach.views import explain_view

    topo, time_scale = topology_of(topology, overrides, name)
    data = explain(topo, service, node, time_scale)
    if json_out:
        print_json(data)
        return
    console().print(explain_view(data, show_rules=not brief), soft_wrap=False)


@command(
    "diagnose",
    epilog="Examples:\n\n  lab diagnose node-a1\n\n  lab diagnose node-b1 --json\n\n"
    "  lab diagnose --local          # this machine's own namespace, e.g. on a real Kubernetes node (read-only)",
)
def diagnose_cmd(
    host: str = typer.Argument(None, help="Lab host to check (see `lab status`), e.g. node-a1."),
    local: bool = typer.Option(False, "--local", help="Check this machine's current namespace instead (read-only)."),
    interval: str = duration_option("1s", "Time between the two samples (0: one sample; at most 1m)", "--interval"),
    name: str = NameOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run the node toolbox (conntrack, nstat, ss, iptables-save -c), compare with thresholds, explain findings.

    Each finding names the exact command that shows it. Exit code 0 whatever the verdict; --json has "verdict".
    """
    from lab.teach.diagnose import diagnose, diagnose_lab_host, local_host  # imported at use for start-up speed
    from lab.teach.views import findings_view

    if local == (host is not None):
        raise InputError("give a lab HOST or --local (not both); e.g. `lab diagnose node-a1`")
    interval_s = seconds(interval, "--interval")
    if not 0 <= interval_s <= 60:
        raise InputError(f"--interval {interval}: must be between 0 and 60 seconds")
    with progress(f"lab diagnose {host or 'local'}", quiet=json_out) as step:
        if local:
            step("sampling the toolbox twice" if interval_s > 0 else "sampling the toolbox")
            report = diagnose(local_host(), interval_s, kernel_log=True)
        else:
            report = diagnose_lab_host(lab_name(name), host, interval_s, progress=step)
    if json_out:
        print_json(report)
        return
    console().print(findings_view(report), soft_wrap=False)
