"""Rendered kube-proxy rules load with iptables-restore --noflush (nft) in a scratch netns, idempotently."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render.kubeproxy import NodeRules, endpoints_from_topology, render_node, stale_chains
from lab.render.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "lab.test-kp-"
BUILTIN = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, iptables)"),
    pytest.mark.skipif(
        not (shutil.which("ip") and shutil.which("iptables-restore")), reason="needs iproute2 and iptables"
    ),
]


def run(*cmd: str, stdin: str | None = None) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()}


CREATED: list[str] = []  # every namespace this module made, to check none is left behind


@contextlib.contextmanager
def scratch_netns() -> Iterator[str]:
    name = PREFIX + secrets.token_hex(4)
    CREATED.append(name)
    run("ip", "netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


def restore(ns: str, text: str) -> None:
    run("ip", "netns", "exec", ns, "iptables-restore", "--noflush", stdin=text)


def save(ns: str) -> str:
    """iptables-save without its timestamp comments, so two saves compare equal."""
    out = run("ip", "netns", "exec", ns, "iptables-save")
    return "\n".join(line for line in out.splitlines() if not line.startswith("#")) + "\n"


def expected_rules(rules: NodeRules) -> Counter:
    """Rules per (table, chain) after jumps then chains: a chain declared in `chains` holds only its rules."""
    _, from_jumps = parse(rules.jumps)
    declared, from_chains = parse(rules.chains)
    want = Counter({k: n for k, n in from_jumps.items() if k[1] not in declared.get(k[0], set())})
    want.update(from_chains)
    return want


def parse(text: str) -> tuple[dict[str, set[str]], Counter]:
    """(table -> chains declared, Counter of (table, chain) -> rules) for restore or save text."""
    chains: dict[str, set[str]] = {}
    rules: Counter = Counter()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            chains.setdefault(table, set())
        elif line.startswith(":"):
            chains[table].add(line[1:].split()[0])
        elif line.startswith(("-A ", "-I ")):
            rules[(table, line.split()[1])] += 1
    return chains, rules


def load(name: str, overrides: list[str] | None = None) -> Topology:
    return load_model(Topology, ROOT / "topologies" / name, overrides=overrides or [])


def case(name: str, node: str, overrides: list[str] | None = None, drop: str | None = None) -> NodeRules:
    topo = load(name, overrides)
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    if drop:
        eps[drop] = []
    return render_node(topo, plan, node, eps)


LOCAL = ["services.accounts.external_traffic_policy=Local"]
LIBERAL = ["kube_proxy.conntrack.tcp_be_liberal=true"]
CASES = {
    "modern": lambda: case("default.yaml", "node-a1"),
    "legacy": lambda: case("seed-2017.yaml", "node-a1"),
    "modern-local-no-pod": lambda: case("default.yaml", "node-c1", LOCAL),
    "legacy-local-no-pod": lambda: case("seed-2017.yaml", "node-c1", LOCAL),
    "modern-no-endpoints": lambda: case("default.yaml", "node-b1", drop="accounts"),
    "legacy-no-endpoints": lambda: case("seed-2017.yaml", "node-b1", drop="accounts"),
    "modern-be-liberal": lambda: case("default.yaml", "node-b1", LIBERAL),
}


@pytest.mark.parametrize("label", list(CASES))
def test_restore_jumps_then_chains_twice(label: str) -> None:
    rules = CASES[label]()
    with scratch_netns() as ns:
        assert save(ns).count("-A ") == 0, "a fresh namespace should have no rules"
        restore(ns, rules.jumps)
        restore(ns, rules.chains)
        first = save(ns)
        restore(ns, rules.chains)  # what every endpoint change does
        second = save(ns)
    assert ns not in namespaces()

    assert second == first, "re-applying chains changed the ruleset"
    want_chains, _ = parse(rules.text())
    got_chains, got_rules = parse(second)
    for table, chains in want_chains.items():
        got = {c for c in got_chains.get(table, set()) if c not in BUILTIN}
        assert got == chains, f"{table}: chains differ"
    assert got_rules == expected_rules(rules), "rule counts per chain differ (missing or duplicated rules)"

    # Spot checks in iptables-save's own spelling.
    if "no-endpoints" not in label:
        assert "-j DNAT --to-destination 100.96." in second
    if label.startswith("modern"):
        assert "--probability 0.50000000000" in second
        assert ("--ctstate INVALID -j DROP" in second) == (label != "modern-be-liberal")
    else:
        assert "INVALID" not in second
        assert re.search(r"-A KUBE-FIREWALL .*--mark 0x8000/0x8000 -j DROP", second)


@pytest.mark.parametrize("name", ["default.yaml", "seed-2017.yaml"])
def test_endpoint_removal_then_stale_chain_cleanup(name: str) -> None:
    topo = load(name)
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    before = render_node(topo, plan, "node-b1", eps)
    after = render_node(topo, plan, "node-b1", dict(eps, accounts=eps["accounts"][:1]))
    removed = str(eps["accounts"][1].ip)
    with scratch_netns() as ns:
        restore(ns, before.jumps)
        restore(ns, before.chains)
        restore(ns, after.chains)
        orphaned = save(ns)
        cleanup = stale_chains(orphaned, after)
        restore(ns, cleanup)
        cleaned = save(ns)
        restore(ns, after.chains)
        again = save(ns)
    assert ns not in namespaces()
    assert f"--to-destination {removed}:" in orphaned  # the old SEP chain is still there, unreferenced
    assert cleanup.count("-X KUBE-SEP-") == 1
    assert f"{removed}" not in cleaned
    assert again == cleaned
    assert parse(cleaned)[0]["nat"] - BUILTIN == parse(after.text())[0]["nat"]


def test_no_scratch_namespace_left_behind() -> None:
    assert CREATED, "the restore tests did not run"
    assert not set(CREATED) & namespaces()
