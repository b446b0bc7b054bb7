"""Unit tests for the kube-proxy rule renderer: golden files plus the properties that make the rules right."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render.kubeproxy import (
    Endpoint,
    chain_name,
    describe_rule,
    endpoints_from_topology,
    health_check_node_port,
    render_node,
    stale_chains,
)
from lab.render.plan import build_plan
from tests.conftest import assert_golden

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "kubeproxy"
LOCAL = ["services.accounts.external_traffic_policy=Local"]

# (golden label, topology file, overrides)
VARIANTS = [
    ("default", "default.yaml", []),
    ("seed-2017", "seed-2017.yaml", []),
    ("default-local", "default.yaml", LOCAL),
    ("seed-2017-local", "seed-2017.yaml", LOCAL),
]


def load(name: str, overrides: list[str] | None = None) -> Topology:
    return load_model(Topology, ROOT / "topologies" / name, overrides=overrides or [])


def render(name: str, node: str, overrides: list[str] | None = None, endpoints=None):
    topo = load(name, overrides)
    return render_node(topo, build_plan(topo), node, endpoints)


def rules_of(text: str, chain: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith((f"-A {chain} ", f"-I {chain} "))]


def svc_chain(service: str, prefix: str = "KUBE-SVC-") -> str:
    return chain_name(prefix, f"default/{service}:thrift")


# --- golden files ------------------------------------------------------------------------------------------


def _golden_cases() -> list[tuple[str, str, list[str], str]]:
    cases = []
    for label, name, overrides in VARIANTS:
        for node in load(name, overrides).k8s_nodes:
            cases.append((label, name, overrides, node.name))
    return cases


@pytest.mark.parametrize(("label", "name", "overrides", "node"), _golden_cases())
def test_golden(label: str, name: str, overrides: list[str], node: str) -> None:
    assert_golden(f"kubeproxy/{label}-{node}.rules", render(name, node, overrides).text())


# --- chain names --------------------------------------------------------------------------------------------


def test_chain_hash_matches_kube_proxy_test_fixtures() -> None:
    # Values that appear in kube-proxy's own unit tests (pkg/proxy/iptables/proxier_test.go).
    assert chain_name("KUBE-SVC-", "ns1/svc1:p80") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert chain_name("KUBE-SEP-", "ns1/svc1:p80", "tcp", "10.180.0.1:80") == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_chain_hash_hand_computed() -> None:
    digest = hashlib.sha256(b"default/accounts:thrifttcp").digest()
    assert base64.b32encode(digest).decode()[:16] == "527RGA3AUSNHXIQS"
    assert chain_name("KUBE-SVC-", "default/accounts:thrift") == "KUBE-SVC-527RGA3AUSNHXIQS"
    # Same hash, other prefixes; the protocol is part of the hash.
    assert chain_name("KUBE-EXT-", "default/accounts:thrift") == "KUBE-EXT-527RGA3AUSNHXIQS"
    assert chain_name("KUBE-SVC-", "default/accounts:thrift", "udp") != "KUBE-SVC-527RGA3AUSNHXIQS"
    assert all(len(chain_name(p, "default/accounts:thrift")) <= 28 for p in ("KUBE-XLB-", "KUBE-SVL-"))


# --- endpoints ----------------------------------------------------------------------------------------------


def test_endpoints_from_topology_in_pod_order() -> None:
    topo = load("seed-2017.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    assert list(eps) == ["accounts", "catalog", "orders"]
    for svc in topo.services:
        pods = topo.pods_of(svc.name)
        assert [e.pod for e in eps[svc.name]] == [p.name for p in pods]
        assert [e.node for e in eps[svc.name]] == [p.node for p in pods]
        assert [e.ip for e in eps[svc.name]] == [plan.ip(p.name) for p in pods]
        assert all(e.port == svc.port for e in eps[svc.name])


def _synthetic(ips: list[str], node: str = "node-a1") -> list[Endpoint]:
    return [Endpoint(pod=f"accounts-{i}", ip=IPv4Address(ip), port=9090, node=node) for i, ip in enumerate(ips)]


def _dnat_order(text: str, service: str) -> list[str]:
    """Endpoints in the order KUBE-SVC-x picks them (via each SEP chain's DNAT)."""
    dnat = {}
    for line in text.splitlines():
        m = re.match(r"-A (KUBE-SEP-\w+) .*--to-destination (\S+)$", line)
        if m:
            dnat[m.group(1)] = m.group(2)
    picks = [line for line in rules_of(text, svc_chain(service)) if "KUBE-SEP-" in line]
    return [dnat[line.rsplit(" ", 1)[1]] for line in picks]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # 1.5: the endpoints controller sorts addresses by IP string.
        ("seed-2017.yaml", ["10.0.0.1:9090", "10.0.0.10:9090", "10.0.0.2:9090"]),
        # 1.28: kube-proxy sorts by the "ip:port" string (":" sorts after "0").
        ("default.yaml", ["10.0.0.10:9090", "10.0.0.1:9090", "10.0.0.2:9090"]),
    ],
)
def test_endpoint_order_follows_the_era_not_the_input(name: str, expected: list[str]) -> None:
    topo = load(name)
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    forward = dict(eps, accounts=_synthetic(["10.0.0.2", "10.0.0.10", "10.0.0.1"]))
    backward = dict(eps, accounts=list(reversed(forward["accounts"])))
    text = render_node(topo, plan, "node-a1", forward).text()
    assert text == render_node(topo, plan, "node-a1", backward).text()
    assert _dnat_order(text, "accounts") == expected


def test_stale_endpoint_still_rendered() -> None:
    topo = load("seed-2017.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    dead = Endpoint(pod="accounts-9", ip=IPv4Address("100.96.3.250"), port=9090, node="node-c1")
    text = render_node(topo, plan, "node-a1", dict(eps, accounts=[*eps["accounts"], dead])).text()
    sep = chain_name("KUBE-SEP-", "default/accounts:thrift", "tcp", "100.96.3.250:9090")
    assert f":{sep} - [0:0]" in text
    masq = f"-A {sep} -m comment --comment default/accounts:thrift -s 100.96.3.250/32 -j KUBE-MARK-MASQ"
    assert masq in text.splitlines()
    assert "--to-destination 100.96.3.250:9090" in text
    assert len([r for r in rules_of(text, svc_chain("accounts")) if "KUBE-SEP-" in r]) == 3


def test_duplicate_endpoints_collapse() -> None:
    topo = load("default.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    doubled = dict(eps, accounts=eps["accounts"] * 2)
    assert render_node(topo, plan, "node-a1", doubled) == render_node(topo, plan, "node-a1", eps)


# --- load balancing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt"), [("seed-2017.yaml", "{:.5f}"), ("default.yaml", "{:.10f}")])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_probabilities_are_one_over_remaining(name: str, fmt: str, n: int) -> None:
    topo = load(name)
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    eps["accounts"] = _synthetic([f"10.1.0.{i + 1}" for i in range(n)])
    text = render_node(topo, plan, "node-a1", eps).chains
    picks = [r for r in rules_of(text, svc_chain("accounts")) if "KUBE-SEP-" in r]
    assert len(picks) == n
    reach = 1.0
    for i, rule in enumerate(picks):
        if i < n - 1:
            assert f"--probability {fmt.format(1 / (n - i))} " in rule
            p = 1 / (n - i)
        else:
            assert "statistic" not in rule  # the last endpoint takes whatever is left
            p = 1.0
        assert reach * p == pytest.approx(1 / n)  # every endpoint gets an equal share
        reach *= 1 - p


# --- era differences ----------------------------------------------------------------------------------------

INVALID = "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
NODEPORTS_LAST = "kubernetes service nodeports; NOTE: this must be the last rule in this chain"


def test_modern_has_the_invalid_drop_rule_and_legacy_does_not() -> None:
    modern = render("default.yaml", "node-a1").text()
    legacy = render("seed-2017.yaml", "node-a1").text()
    assert modern.count(INVALID) == 1
    assert "INVALID" not in legacy
    assert "KUBE-FORWARD" not in legacy  # 1.5 had no KUBE-FORWARD chain at all


def test_tcp_be_liberal_removes_the_invalid_drop_rule() -> None:
    text = render("default.yaml", "node-a1", ["kube_proxy.conntrack.tcp_be_liberal=true"]).text()
    assert "INVALID" not in text
    assert "kubernetes forwarding rules" in text  # the rest of KUBE-FORWARD stays


def test_random_fully_follows_the_topology() -> None:
    masq = "-j MASQUERADE"
    assert f"{masq} --random-fully" in render("default.yaml", "node-a1").chains
    assert "--random-fully" not in render("seed-2017.yaml", "node-a1").chains
    off = render("default.yaml", "node-a1", ["kube_proxy.masquerade_random_fully=false"]).chains
    on = render("seed-2017.yaml", "node-a1", ["kube_proxy.masquerade_random_fully=true"]).chains
    assert "--random-fully" not in off
    assert f"{masq} --random-fully" in on


def test_legacy_nodeport_marks_then_jumps_to_svc() -> None:
    text = render("seed-2017.yaml", "node-b1").chains
    rules = [r for r in rules_of(text, "KUBE-NODEPORTS") if "--dport 31001 " in r]
    assert [r.rsplit(" ", 1)[1] for r in rules] == ["KUBE-MARK-MASQ", svc_chain("accounts")]
    assert rules[0].startswith("-A KUBE-NODEPORTS -m comment --comment default/accounts:thrift -m tcp -p tcp")


def test_modern_nodeport_goes_through_ext_chain() -> None:
    text = render("default.yaml", "node-b1").chains
    ext = svc_chain("accounts", "KUBE-EXT-")
    assert [r for r in rules_of(text, "KUBE-NODEPORTS") if "--dport 30090 " in r][0].endswith(f"-j {ext}")
    assert [r.rsplit(" ", 1)[1] for r in rules_of(text, ext)] == ["KUBE-MARK-MASQ", svc_chain("accounts")]


@pytest.mark.parametrize("name", ["default.yaml", "seed-2017.yaml"])
def test_nodeports_jump_is_the_last_rule_of_kube_services(name: str) -> None:
    nat = render(name, "node-a1").chains.split("*nat", 1)[1]
    last = rules_of(nat, "KUBE-SERVICES")[-1]
    assert '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"' in last
    assert last.endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")


@pytest.mark.parametrize("name", ["default.yaml", "seed-2017.yaml"])
def test_cluster_ip_rules_use_the_service_port(name: str) -> None:
    topo = load(name, ["services.accounts.cluster_port=8080"])
    plan = build_plan(topo)
    text = render_node(topo, plan, "node-a1").chains
    ip = plan.cluster_ips["accounts"]
    mine = [r for r in rules_of(text, "KUBE-SERVICES") if f"-d {ip}" in r]
    line = [r for r in mine if r.endswith(svc_chain("accounts"))]
    assert len(line) == 1
    assert '--comment "default/accounts:thrift cluster IP"' in line[0]
    assert "--dport 8080 " in line[0]
    assert "--to-destination 100.96.1.2:9090" in text  # DNAT still goes to the pod's targetPort


def test_masquerade_and_drop_marks() -> None:
    legacy = render("seed-2017.yaml", "node-a1").chains
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x00004000/0x00004000" in legacy
    assert "-A KUBE-MARK-DROP -j MARK --set-xmark 0x00008000/0x00008000" in legacy
    assert "-m mark --mark 0x00008000/0x00008000 -j DROP" in rules_of(legacy, "KUBE-FIREWALL")[0]
    modern = render("default.yaml", "node-a1").chains
    assert rules_of(modern, "KUBE-POSTROUTING")[:2] == [
        "-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000",
    ]
    assert "KUBE-MARK-DROP" not in modern  # 1.28 drops in the filter table instead


# --- Local traffic policy -----------------------------------------------------------------------------------


def test_legacy_local_without_local_pod_marks_for_drop() -> None:
    topo = load("seed-2017.yaml", LOCAL)
    assert {p.node for p in topo.pods_of("accounts")} == {"node-a1", "node-b1"}
    xlb = svc_chain("accounts", "KUBE-XLB-")
    text = render("seed-2017.yaml", "node-c1", LOCAL).chains
    nodeport = [r for r in rules_of(text, "KUBE-NODEPORTS") if "--dport 31001 " in r]
    assert len(nodeport) == 1 and nodeport[0].endswith(f"-j {xlb}")  # no masquerade mark for Local
    assert rules_of(text, xlb)[-1] == (
        f'-A {xlb} -m comment --comment "default/accounts:thrift has no local endpoints" -j KUBE-MARK-DROP'
    )
    with_pod = render("seed-2017.yaml", "node-a1", LOCAL).chains
    assert "KUBE-MARK-DROP" not in " ".join(rules_of(with_pod, xlb))
    balance = [r for r in rules_of(with_pod, xlb) if "Balancing rule" in r]
    assert len(balance) == 1 and "statistic" not in balance[0]
    assert "--to-destination 100.96.1.2:9090" in with_pod


def test_modern_local_without_local_pod_drops_in_filter() -> None:
    text = render("default.yaml", "node-c1", LOCAL).chains
    filt, nat = text.split("*nat", 1)
    drop = rules_of(filt, "KUBE-EXTERNAL-SERVICES")
    assert drop == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/accounts:thrift has no local endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30090 -j DROP"
    ]
    svl, ext = svc_chain("accounts", "KUBE-SVL-"), svc_chain("accounts", "KUBE-EXT-")
    assert svl not in text
    assert all("-j KUBE-SVL-" not in r for r in rules_of(nat, ext))
    assert any("health check node port" in r for r in rules_of(filt, "KUBE-NODEPORTS"))

    with_pod = render("default.yaml", "node-a1", LOCAL).chains
    assert "has no local endpoints" not in with_pod
    assert rules_of(with_pod, ext)[-1] == f"-A {ext} -j {svl}"
    assert len(rules_of(with_pod, svl)) == 1 and "100.96.1.2:9090" in rules_of(with_pod, svl)[0]
    assert len([r for r in rules_of(with_pod, svc_chain("accounts")) if "SEP" in r]) == 2


def test_health_check_node_port() -> None:
    topo = load("default.yaml", LOCAL)
    assert health_check_node_port(topo, "accounts") == 32767
    assert health_check_node_port(topo, "catalog") is None
    both = load("default.yaml", [*LOCAL, "services.catalog.external_traffic_policy=Local"])
    ports = {health_check_node_port(both, s.name) for s in both.services}
    assert ports == {32767, 32766}
    assert not ports & {s.node_port for s in both.services}


# --- services without endpoints -----------------------------------------------------------------------------


def test_legacy_zero_endpoints_rejects_cluster_ip_only() -> None:
    topo = load("seed-2017.yaml")
    plan = build_plan(topo)
    eps = dict(endpoints_from_topology(topo, plan), accounts=[])
    text = render_node(topo, plan, "node-a1", eps).chains
    filt, nat = text.split("*nat", 1)
    assert rules_of(filt, "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "default/accounts:thrift has no endpoints" '
        "-m tcp -p tcp -d 100.64.0.16/32 --dport 9090 -j REJECT"
    ]
    assert "REJECT" not in nat
    assert f":{svc_chain('accounts')} - [0:0]" in nat and not rules_of(nat, svc_chain("accounts"))
    assert len([r for r in rules_of(nat, "KUBE-NODEPORTS") if "--dport 31001 " in r]) == 2


def test_modern_zero_endpoints_rejects_in_filter() -> None:
    topo = load("default.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    del eps["accounts"]  # a missing service means no endpoints
    text = render_node(topo, plan, "node-a1", eps).chains
    filt, nat = text.split("*nat", 1)
    why = '"default/accounts:thrift has no endpoints"'
    assert rules_of(filt, "KUBE-SERVICES") == [
        f"-A KUBE-SERVICES -m comment --comment {why} -m tcp -p tcp -d 100.64.0.16 --dport 9090 -j REJECT"
    ]
    assert rules_of(filt, "KUBE-EXTERNAL-SERVICES") == [
        f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {why} -m addrtype --dst-type LOCAL "
        "-m tcp -p tcp --dport 30090 -j REJECT"
    ]
    assert "accounts" not in nat
    assert "catalog" in nat


# --- structure: what makes the text safe to re-apply ------------------------------------------------------


def _tables(text: str) -> dict[str, tuple[list[str], list[str]]]:
    """table -> (declared chains, rule lines), merged over the whole text."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.setdefault(table, ([], []))
        elif line.startswith(":"):
            out[table][0].append(line[1:].split()[0])
        elif line.startswith(("-A ", "-I ")):
            out[table][1].append(line)
    return out


@pytest.mark.parametrize(("label", "name", "overrides", "node"), _golden_cases())
def test_every_chain_is_declared_and_every_target_exists(label, name, overrides, node) -> None:
    rules = render(name, node, overrides)
    builtin = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}
    chains_part = _tables(rules.chains)
    for table, (declared, lines) in chains_part.items():
        assert len(declared) == len(set(declared)), f"{table}: a chain declared twice"
        for line in lines:
            assert line.startswith("-A "), "chains must only append to chains they flush"
            assert line.split()[1] in declared, f"{table}: {line} appends to an undeclared chain"
    everything = _tables(rules.text())
    for table, (declared, lines) in everything.items():
        for line in _tables(rules.jumps).get(table, ([], []))[1]:
            assert line.split()[1] in builtin
        for line in lines:
            target = line.split(" -j ")[1].split()[0]
            if target.startswith("KUBE-"):
                assert target in declared, f"{table}: {line} jumps to an undeclared chain"


def test_stale_chains_lists_only_orphaned_service_chains() -> None:
    topo = load("default.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    before = render_node(topo, plan, "node-a1", eps)
    after = render_node(topo, plan, "node-a1", dict(eps, accounts=eps["accounts"][:1]))
    gone = chain_name("KUBE-SEP-", "default/accounts:thrift", "tcp", f"{eps['accounts'][1].ip}:9090")
    # Pretend iptables-save: the old ruleset plus a chain that is not kube-proxy's.
    saved = before.text().replace("*nat\n", "*nat\n:DOCKER - [0:0]\n", 1)
    assert stale_chains(saved, after) == f"*nat\n:{gone} - [0:0]\n-X {gone}\nCOMMIT\n"
    assert stale_chains(saved, before) == ""
    assert describe_rule(f"-X {gone}") == f"deletes chain {gone}"


def test_unknown_node() -> None:
    with pytest.raises(ValueError, match="unknown node 'node-z9'"):
        render("default.yaml", "node-z9")


def test_endpoint_dict_is_not_modified() -> None:
    topo = load("default.yaml")
    plan = build_plan(topo)
    eps = endpoints_from_topology(topo, plan)
    snapshot = {k: list(v) for k, v in eps.items()}
    eps["accounts"] = [replace(eps["accounts"][1]), eps["accounts"][0]]
    snapshot["accounts"] = list(eps["accounts"])
    render_node(topo, plan, "node-b1", eps)
    assert eps == snapshot


# --- describe_rule ------------------------------------------------------------------------------------------


def test_describe_rule_examples() -> None:
    sep = "KUBE-SEP-WYZSIGPK7S6MRMLX"
    rule = f"-A KUBE-SVC-527RGA3AUSNHXIQS -m statistic --mode random --probability 0.5 -j {sep}"
    assert describe_rule(rule) == f"picks endpoint {sep} with probability 0.50 (random)"
    assert describe_rule(f'-A KUBE-SVC-X -m comment --comment "a -> b" -j {sep}') == (
        f"picks endpoint {sep} (every connection that reaches this rule)"
    )
    dnat = f"-A {sep} -m comment --comment a/b:c -m tcp -p tcp -j DNAT --to-destination 1.2.3.4:9090"
    assert describe_rule(dnat) == "DNATs TCP packets to pod 1.2.3.4:9090 (rewrites the destination)"
    assert describe_rule(INVALID) == "drops packets in conntrack state INVALID (silently)"
    assert describe_rule("-A KUBE-MARK-DROP -j MARK --set-xmark 0x00008000/0x00008000") == (
        "sets mark 0x00008000 (drop mark) on all packets"
    )
    assert describe_rule("-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN") == (
        "returns packets not marked 0x00004000/0x00004000 to the calling chain"
    )
    masq = (
        '-A KUBE-SERVICES -m comment --comment "x cluster IP" -m tcp -p tcp -d 100.64.0.16/32 --dport 9090 '
        "! -s 100.96.0.0/11 -j KUBE-MARK-MASQ"
    )
    assert describe_rule(masq) == (
        "marks TCP packets from outside 100.96.0.0/11 to 100.64.0.16/32:9090 for masquerade (SNAT on the way out)"
    )
    last = f'-A KUBE-SERVICES -m comment --comment "{NODEPORTS_LAST}" -m addrtype --dst-type LOCAL '
    last += "-j KUBE-NODEPORTS"
    assert describe_rule(last) == "jumps to KUBE-NODEPORTS for packets sent to a local address of this node"
    declared = describe_rule(":KUBE-NODEPORTS - [0:0]")
    assert declared == "declares chain KUBE-NODEPORTS (and empties it if it exists)"
    hook = describe_rule('-I PREROUTING -m comment --comment "k s p" -j KUBE-SERVICES')
    assert hook == "hooks KUBE-SERVICES into PREROUTING for all packets"
    # iptables-save's spelling of the same rule reads the same way.
    saved = f"-A KUBE-SVC-X -m statistic --mode random --probability 0.33332999982 -j {sep}"
    assert describe_rule(saved) == f"picks endpoint {sep} with probability 0.33 (random)"


@pytest.mark.parametrize(("label", "name", "overrides", "node"), _golden_cases())
def test_describe_rule_covers_every_rendered_line(label, name, overrides, node) -> None:
    for line in render(name, node, overrides).text().splitlines():
        text = describe_rule(line)
        assert text and "unparsable" not in text and "not a rule" not in text, line
        if line.startswith(("-A", "-I")):
            assert "no target" not in text, line
