"""Terminal views (rich) of a trace, an explanation and a diagnosis; the CLI only prints them."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from lab.teach.tracedata import TraceResult

_SEVERITY_STYLE = {"ok": "green", "healthy": "green", "info": "cyan", "warning": "yellow", "critical": "bold red"}


def trace_tree(result: TraceResult, show_rules: bool = True) -> RenderableType:
    s = result.summary
    status = "[green]OK[/]" if result.ok else f"[bold red]FAILED[/]: {escape(result.error or '')}"
    root = Tree(f"[bold]lab trace {escape(result.service)} via {result.via}[/] ({result.lab}): {status}")
    for hop in result.hops:
        style = "bold red" if hop.problem else "bold"
        branch = root.add(f"[{style}]{escape(hop.title)}[/]")
        for line in hop.says:
            branch.add(Text(line))
        if hop.rules and show_rules:
            rules = branch.add(
                "[dim]rules matched, in order (table chain: rule -> what it does; counter: its packets during the "
                "trace, other connections included)[/]"
            )
            for r in hop.rules:
                head = f"{r['table']} {r['chain']}: {r['rule'] or r['verdict']}"
                if r.get("counter_delta") is not None:
                    head += f"  [counter +{r['counter_delta']}]"
                leaf = rules.add(Text(head, style="red" if r["verdict"] == "DROP" else ""))
                if r["meaning"]:
                    leaf.add(Text(r["meaning"], style="italic"))
        for cmd in hop.see:
            branch.add(Text(f"see: {cmd}", style="dim"))
    parts: list[RenderableType] = [root]
    if s.get("instance"):
        steps = [s["elb_node"]] if s.get("elb_node") else []
        steps.append(s["instance"])
        steps += s["chains"] or ["no KUBE-* chain"]
        if s.get("dnat_to"):
            steps.append(f"DNAT to {s['dnat_to']}")
        steps.append(f"{s['pod']} on {s['pod_node']} ({s['pod_az']})" if s.get("pod") else "no pod reached")
        line = "in short: " + " -> ".join(steps) + ("" if result.ok else " (the connection failed)")
        if s.get("snat") is not None:
            line += f"; SNAT: yes, to {s['snat_to']}" if s["snat"] else "; SNAT: no"
        if s.get("cross_az"):
            line += "; crossed an AZ boundary"
        parts.append(Text(line, style="bold"))
    if s.get("other_syns_left_out"):
        parts.append(
            Text(
                f"({s['other_syns_left_out']} other SYNs, e.g. ELB health checks, were traced at the same time and "
                f"left out: only this connection's own tuples are shown)",
                style="dim",
            )
        )
    return Group(*parts)


def severity_text(severity: str) -> Text:
    return Text(severity.upper(), style=_SEVERITY_STYLE.get(severity, ""))


def findings_view(report: dict[str, Any]) -> RenderableType:
    """A diagnosis: the verdict, then each finding with the command that shows it."""
    head = Text.assemble(
        (f"diagnose {report['host']}: ", "bold"),
        severity_text(report["verdict"]),
        f" ({len(report['findings'])} findings, {len(report['checks'])} checks)",
    )
    tree = Tree(head)
    for f in report["findings"]:
        branch = tree.add(Text.assemble(severity_text(f["severity"]), " ", f["title"]))
        if f.get("detail"):
            branch.add(Text(f["detail"]))
        branch.add(Text(f"see: {f['command']}", style="dim"))
    ok = [c for c in report["checks"] if c["severity"] == "ok"]
    if ok:
        fine = tree.add(Text(f"{len(ok)} checks found nothing wrong", style="green"))
        for c in ok:
            fine.add(Text(f"{c['title']}  ({c['command']})", style="dim"))
    return tree


def explain_view(data: dict[str, Any], show_rules: bool = True) -> RenderableType:
    """The static walk-through: the ELB, then each service node by node, then what the eras and policies change."""
    head = (
        f"[bold]lab explain[/]: topology {escape(data['topology'])}, Kubernetes {data['kubernetes_version']}, "
        f"kube-proxy {data['kube_proxy']}"
    )
    root = Tree(head)
    elb = data["elb"]
    e = root.add("[bold]The ELB (a Classic ELB, TCP listeners)[/]")
    for line in data["elb_words"]:
        e.add(Text(line))
    lst = e.add("listeners")
    for item in elb["listeners"]:
        lst.add(Text(f":{item['port']} -> {item['service']} (NodePort {item['node_port']}, {item['policy']})"))
    nodes = e.add("ELB nodes and the instances each sends to (and health-checks)")
    for item in elb["nodes"]:
        nodes.add(Text(f"{item['name']} ({item['az']}, {item['address']}) -> {', '.join(item['instances'])}"))
    for svc in data["services"]:
        listener = f"ELB :{svc['listener']} -> " if svc["listener"] else ""
        b = root.add(
            f"[bold]service {escape(svc['name'])}[/] ({svc['namespace']}/{svc['name']}, externalTrafficPolicy "
            f"{svc['policy']}): {listener}NodePort {svc['node_port']} -> pods :{svc['pod_port']} "
            f"(cluster IP {svc['cluster_ip']})"
        )
        pods = b.add("pods")
        for p in svc["pods"]:
            pods.add(Text(f"{p['name']} on {p['node']} ({p['az']}) {p['address']}"))
        if svc["health_check_node_port"]:
            b.add(Text(f"healthCheckNodePort {svc['health_check_node_port']} (kube-proxy answers /healthz there)"))
        for group in svc["nodes"]:
            same = ", ".join(group["nodes"])
            g = b.add(f"[bold]on {same}[/]" + (" (same rules)" if len(group["nodes"]) > 1 else ""))
            g.add(Text(group["summary"], style="red" if group["dropped"] and not group["endpoints"] else "green"))
            if not show_rules:
                continue
            rules = g.add("[dim]the rules, in the order the kernel reads them (nested: inside the chain jumped to)[/]")
            stack = [rules]
            for st in group["steps"]:
                style = "dim" if not st["applies"] else ""
                label = Text(f"{st['table']} {st['chain']}: {st['rule'] or '...'}\n", style=style)
                label.append(st["meaning"], style="italic " + style)
                if st["note"]:
                    label.append(f" [{st['note']}]", style="dim")
                parent = stack[min(st["depth"], len(stack) - 1)]
                node = parent.add(label)
                del stack[st["depth"] + 1 :]
                stack.append(node)
    f = root.add(f"[bold]kube-proxy eras[/]: this lab runs {data['flavour']['name']}")
    for name in (data["flavour"]["name"], data["other_flavour"]["name"]):
        words = data["flavour"]["words"] if name == data["flavour"]["name"] else data["other_flavour"]["words"]
        branch = f.add(f"{name}" + (" (this lab)" if name == data["flavour"]["name"] else ""))
        for line in words:
            branch.add(Text(line))
    p = root.add("[bold]externalTrafficPolicy[/]: Cluster vs Local")
    for name, words in data["policies"].items():
        branch = p.add(name)
        for line in words:
            branch.add(Text(line))
    return root
