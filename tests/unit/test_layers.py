"""The package's floors: a module imports only from its own floor or below (at module level, inside functions,
and for type checking alike), and no two lab modules import each other in a circle.

An import inside a function is for start-up speed only (the command imports what it uses when it runs); it is
never a way around this rule. docs/architecture.md tells the floors and why.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

# Lowest first. A module belongs to the first entry that is it or one of its packages.
FLOORS: list[tuple[str, ...]] = [
    ("lab.errors",),
    ("lab.models",),  # validated declarative files, no I/O
    ("lab.render",),  # pure renderers: address plan, kube-proxy rules, haproxy.cfg, kind files, accounting rules
    ("lab.state", "lab.hosts", "lab.runtime", "lab.haproxy_stats", "lab.toolbox", "lab.spec"),  # host-level I/O
    ("lab.backends",),  # build what a LabSpec declares, hand out hosts
    ("lab.lab",),  # the runtime handle: a LabSpec with its backend and hosts
    ("lab.rpc", "lab.load", "lab.faults", "lab.metrics"),  # work on any lab handle
    ("lab.lifecycle", "lab.doctor"),  # up, down, status, clean; what this machine can run
    ("lab.teach", "lab.scenarios", "lab.incidents", "lab.docsgen", "lab.tour"),  # stories told from the above
    ("lab.cli",),  # thin: parse, one library call, print
    ("lab",),  # the package itself (exactly: a new module must be placed above)
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    for i, names in enumerate(FLOORS):
        if any(module == n or (n != "lab" and module.startswith(n + ".")) for n in names):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/unit/test_layers.py")


def lab_imports(path: Path) -> set[str]:
    """Every lab module this file imports, wherever the import statement is."""
    known = {module_name(p) for p in (REPO / "lab").rglob("*.py")}
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "lab" or m.startswith("lab.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): lab_imports(p) for p in sorted((REPO / "lab").rglob("*.py"))}


def test_every_import_points_down_or_sideways():
    upward = [
        f"{mod} (floor {floor_of(mod)}) imports {dep} (floor {floor_of(dep)})"
        for mod, deps in graph().items()
        for dep in sorted(deps)
        if floor_of(dep) > floor_of(mod)
    ]
    assert upward == [], "\n".join(upward)


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of meaning
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in edges.items()}
    assert find_cycles(edges) == []


def test_the_checks_can_fail():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor_of("lab.cli.commands.core") > floor_of("lab.lab") > floor_of("lab.backends.netns")
    edges: dict[str, set[str]] = defaultdict(set)
    edges["lab.backends.netns"].add("lab.metrics.elb")
    assert any(floor_of(d) > floor_of(m) for m, ds in edges.items() for d in ds)
