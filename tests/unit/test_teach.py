# ruff: noqa: E501  (captured xtables-monitor and conntrack output, kept verbatim: long lines)
"""The teaching modules without root: trace parsers (xtables-monitor, conntrack XML, HAProxy log), explain, diagnose
thresholds, diagrams, and the CLI's help and bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.spec import load_topology
from lab.teach import diagnose as dg
from lab.teach.diagram import layout, mermaid, render_image
from lab.teach.elblog import parse_line
from lab.teach.explain import explain
from lab.teach.flows import parse_xml
from lab.teach.nftrace import parse_monitor, ruleset
from lab.teach.tracedata import Hop, TraceResult
from lab.toolbox import RuleCounter
from tests.conftest import TOPOLOGIES

runner = CliRunner()

# Captured on this machine: `xtables-monitor --trace` in a node of the default lab while an ELB health check
# (172.20.64.5 -> node-a1:30090) and a client SYN (10.10.0.10 -> node-a1:30090) came in; the first trace id is
# reused by a later packet (the SYN-ACK), which must start a new packet.
MONITOR = """\
PACKET: 2 558796fe IN=eth0 MACSRC=1a:3a MACDST=72:91 MACPROTO=0800 SRC=172.20.64.5 DST=172.20.64.16 LEN=60 TOS=0x0 TTL=64 ID=47845 DF SPORT=56858 DPORT=30090 SYN
 TRACE: 2 558796fe lab_trace_ab12cd34:pre:rule:0x2:CONTINUE  -4 -t lab_trace_ab12cd34 -A pre -p tcp -m tcp --dport 30090 --tcp-flags SYN,ACK SYN -j TRACE
 TRACE: 2 558796fe lab_trace_ab12cd34:pre:policy:ACCEPT
PACKET: 2 c994e9d6 IN=eth0 MACSRC=32:55 MACDST=72:91 MACPROTO=0800 SRC=10.10.0.10 DST=172.20.64.16 LEN=60 TOS=0x0 TTL=62 ID=21661 DF SPORT=34276 DPORT=30090 SYN
 TRACE: 2 c994e9d6 lab_trace_ab12cd34:pre:rule:0x2:CONTINUE  -4 -t lab_trace_ab12cd34 -A pre -p tcp -m tcp --dport 30090 --tcp-flags SYN,ACK SYN -j TRACE
PACKET: 2 558796fe IN=eth0 MACSRC=1a:3a MACDST=72:91 MACPROTO=0800 SRC=172.20.64.5 DST=172.20.64.16 LEN=60 TOS=0x0 TTL=64 ID=47845 DF SPORT=56858 DPORT=30090 SYN
 TRACE: 2 558796fe nat:PREROUTING:rule:0x7:JUMP:KUBE-SERVICES  -4 -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
 TRACE: 2 c994e9d6 lab_trace_ab12cd34:pre:policy:ACCEPT
PACKET: 2 c994e9d6 IN=eth0 MACSRC=32:55 MACDST=72:91 MACPROTO=0800 SRC=10.10.0.10 DST=172.20.64.16 LEN=60 TOS=0x0 TTL=62 ID=21661 DF SPORT=34276 DPORT=30090 SYN
 TRACE: 2 c994e9d6 nat:PREROUTING:rule:0x7:JUMP:KUBE-SERVICES  -4 -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
 TRACE: 2 c994e9d6 nat:KUBE-SERVICES:rule:0x2e:JUMP:KUBE-NODEPORTS  -4 -t nat -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
 TRACE: 2 c994e9d6 nat:KUBE-NODEPORTS:rule:0x19:JUMP:KUBE-EXT-527RGA3AUSNHXIQS  -4 -t nat -A KUBE-NODEPORTS -p tcp -m comment --comment "default/accounts:thrift" -m tcp --dport 30090 -j KUBE-EXT-527RGA3AUSNHXIQS
 TRACE: 2 c994e9d6 nat:KUBE-EXT-527RGA3AUSNHXIQS:rule:0x1c:JUMP:KUBE-SVC-527RGA3AUSNHXIQS  -4 -t nat -A KUBE-EXT-527RGA3AUSNHXIQS -j KUBE-SVC-527RGA3AUSNHXIQS
 TRACE: 2 c994e9d6 nat:KUBE-SVC-527RGA3AUSNHXIQS:rule:0x1e:JUMP:KUBE-SEP-L5JQWTQHXLVHC2NM  -4 -t nat -A KUBE-SVC-527RGA3AUSNHXIQS -m comment --comment "default/accounts:thrift -> 100.96.2.2:9090" -j KUBE-SEP-L5JQWTQHXLVHC2NM
 TRACE: 2 c994e9d6 nat:KUBE-SEP-L5JQWTQHXLVHC2NM:rule:0x22:ACCEPT  -4 -t nat -A KUBE-SEP-L5JQWTQHXLVHC2NM -p tcp -m comment --comment "default/accounts:thrift" -m tcp -j DNAT --to-destination 100.96.2.2:9090
PACKET: 2 c994e9d6 IN=eth0 OUT=eth0 MACSRC=32:55 MACDST=72:91 MACPROTO=0800 SRC=10.10.0.10 DST=100.96.2.2 LEN=60 TOS=0x0 TTL=61 ID=21661 DF SPORT=34276 DPORT=9090 SYN MARK=0x4000
 TRACE: 2 c994e9d6 filter:FORWARD:rule:0x12:JUMP:KUBE-FORWARD  -4 -t filter -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
 TRACE: 2 c994e9d6 filter:KUBE-FORWARD:rule:0x18:ACCEPT  -4 -t filter -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
PACKET: 2 c994e9d6 IN=eth0 OUT=eth0 MACSRC=32:55 MACDST=72:91 MACPROTO=0800 SRC=10.10.0.10 DST=100.96.2.2 LEN=60 TOS=0x0 TTL=61 ID=21661 DF SPORT=34276 DPORT=9090 SYN MARK=0x4000
 TRACE: 2 c994e9d6 nat:POSTROUTING:rule:0x9:JUMP:KUBE-POSTROUTING  -4 -t nat -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
 TRACE: 2 c994e9d6 nat:KUBE-POSTROUTING:rule:0x14:0xfffffffb  -4 -t nat -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
PACKET: 2 558796fe IN=eth0 MACSRC=aa:bb MACDST=72:91 MACPROTO=0800 SRC=100.96.1.2 DST=100.96.1.1 LEN=60 TOS=0x0 TTL=64 ID=0 DF SPORT=9090 DPORT=62494 SYN ACK
 TRACE: 2 558796fe lab_trace_ab12cd34:pre:rule:0x3:CONTINUE  -4 -t lab_trace_ab12cd34 -A pre -p tcp -m tcp --sport 9090 -j TRACE
"""

CONNTRACK_XML = """<?xml version="1.0" encoding="utf-8"?>
<conntrack>
<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>100.96.1.1</src><dst>224.0.0.22</dst></layer3><layer4 protonum="2" protoname="unknown"></layer4></meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>224.0.0.22</src><dst>100.96.1.1</dst></layer3><layer4 protonum="2" protoname="unknown"></layer4></meta><meta direction="independent"><timeout>554</timeout><mark>0</mark><use>1</use><id>671144096</id><unreplied/></meta></flow>
<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>172.20.64.5</src><dst>172.20.64.16</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>53118</sport><dport>30090</dport></layer4></meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>100.96.1.2</src><dst>100.96.1.1</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>9090</sport><dport>36434</dport></layer4></meta><meta direction="independent"><state>ESTABLISHED</state><timeout>86399</timeout><mark>0</mark><use>1</use><id>42</id><assured/></meta></flow>
<flow><meta direction="original"><layer3 protonum="2" protoname="ipv4"><src>172.20.64.5</src><dst>172.20.64.16</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>40000</sport><dport>30090</dport></layer4></meta><meta direction="reply"><layer3 protonum="2" protoname="ipv4"><src>100.96.1.2</src><dst>172.20.64.5</dst></layer3><layer4 protonum="6" protoname="tcp"><sport>9090</sport><dport>40000</dport></layer4></meta><meta direction="independent"><state>TIME_WAIT</state><timeout>119</timeout><mark>0</mark><use>1</use><id>43</id><assured/></meta></flow>
</conntrack>
"""


# --- nftrace ---


def test_monitor_output_groups_packets_by_trace_id_and_keeps_order():
    packets = parse_monitor(MONITOR.splitlines())
    assert [p.first.summary() for p in packets] == [
        "172.20.64.5:56858 -> 172.20.64.16:30090 SYN",
        "10.10.0.10:34276 -> 172.20.64.16:30090 SYN",
        "100.96.1.2:9090 -> 100.96.1.1:62494 SYN+ACK",  # same id as the health check: a new packet
    ]
    client = packets[1]
    assert client.is_flow("10.10.0.10", 34276, "172.20.64.16", 30090)
    assert not packets[0].is_flow("10.10.0.10", 34276, "172.20.64.16", 30090)
    chains = [(s.table, s.chain) for s in client.rules()]
    assert chains[:4] == [("nat", "PREROUTING"), ("nat", "KUBE-SERVICES"), ("nat", "KUBE-NODEPORTS"),
                          ("nat", "KUBE-EXT-527RGA3AUSNHXIQS")]  # fmt: skip
    dnat = next(s for s in client.rules() if s.chain.startswith("KUBE-SEP-"))
    assert dnat.rule.startswith("-A KUBE-SEP-L5JQWTQHXLVHC2NM ") and dnat.verdict == "ACCEPT"
    assert client.rules()[-1].verdict == "RETURN"  # xtables-monitor prints it as 0xfffffffb
    assert all(not s.ours for s in client.rules()) and any(s.ours for s in client.steps)
    after = client.view_at("filter", "FORWARD")
    assert after is not None and after.get("DST") == "100.96.2.2" and after.get("MARK") == "0x4000"
    # the health check's packet only has its own events, not the client's
    assert [s.chain for s in packets[0].rules()] == ["PREROUTING"]


def test_trace_ruleset_traces_syns_answers_and_an_untracked_marker():
    text = ruleset("lab_trace_x", [9090, 30090, 9090])
    assert "table ip lab_trace_x" in text and "{ 9090, 30090 }" in text
    assert "priority -350" in text  # before conntrack: a SYN conntrack drops is still seen
    assert "notrack" in text and "udp dport 9" in text


# --- conntrack and HAProxy log ---


def test_conntrack_xml_flows_say_dnat_and_snat():
    flows = parse_xml(CONNTRACK_XML)
    assert len(flows) == 2  # the IGMP entry has no ports
    masq, local = flows
    assert masq.dnat and masq.snat and masq.state == "ESTABLISHED" and masq.assured
    assert str(masq.reply) == "100.96.1.2:9090 -> 100.96.1.1:36434"
    assert masq.to_json()["dnat"] == "100.96.1.2:9090" and masq.to_json()["snat"] == "100.96.1.1:36434"
    assert local.dnat and not local.snat  # Local policy: the reply goes straight back to the ELB node
    assert "src=172.20.64.5 dst=172.20.64.16 sport=40000 dport=30090" in local.conntrack_line()
    assert masq.original.reversed().src == "172.20.64.16"


def test_haproxy_tcplog_lines():
    ok = parse_line(
        "10.10.0.10:39828 [28/Nov/2026:16:28:07.898] listener-9090 accounts/node-a1 1/0/2 127 -- 1/1/0/0/0 0/0"
    )
    assert ok is not None and ok.server == "node-a1" and ok.connect_ms == 0 and ok.ended_normally
    assert (ok.client, ok.client_port, ok.frontend) == ("10.10.0.10", 39828, "listener-9090")
    nosrv = parse_line(
        "10.20.0.10:56029 [28/Nov/2026:16:40:01.002] listener-9001 accounts/<NOSRV> -1/-1/0 0 SC 1/1/0/0/0 0/0"
    )
    assert nosrv is not None and nosrv.server == "<NOSRV>" and not nosrv.ended_normally
    assert "refused or reset" in nosrv.termination_words()
    retried = parse_line(
        "10.10.0.10:1 [28/Nov/2026:16:40:01.002] listener-9090 accounts/node-b1 0/3002/3010 130 -- 1/1/0/0/+3 0/0"
    )
    assert retried is not None and retried.retries == 3 and retried.redispatched
    assert parse_line("Health check for server elb-health/node-a1 succeeded") is None


# --- explain ---


def test_explain_cluster_policy_spreads_over_all_pods_with_snat():
    data = explain(load_topology(TOPOLOGIES / "default.yaml"), "accounts")
    svc = data["services"][0]
    assert len(svc["nodes"]) == 1 and svc["nodes"][0]["nodes"] == ["node-a1", "node-b1", "node-c1"]  # same rules
    node = svc["nodes"][0]
    assert node["masquerade"] and not node["dropped"]
    assert sorted(e["pod"] for e in node["endpoints"]) == ["accounts-0", "accounts-1"]
    assert sum(e["share"] for e in node["endpoints"]) == pytest.approx(1.0)
    chains = [s["chain"] for s in node["steps"] if s["applies"]]
    assert chains[0] == "KUBE-SERVICES" and "KUBE-NODEPORTS" in chains
    assert any(c.startswith("KUBE-EXT-") for c in chains) and any(c.startswith("KUBE-SEP-") for c in chains)
    assert (
        data["elb"]["health_check"]["target"] == "TCP:30090"
        and data["elb"]["health_check"]["checks_service"] == "accounts"
    )
    assert data["elb"]["health_check"]["checks_per_minute"] == 18.0


@pytest.mark.parametrize("flavour", ["modern", "legacy"])
def test_explain_local_policy_keeps_the_source_and_drops_without_a_local_pod(flavour):
    topo = load_topology(
        TOPOLOGIES / "default.yaml",
        ["services.accounts.external_traffic_policy=Local", f"kube_proxy.flavour={flavour}"],
    )
    svc = explain(topo, "accounts")["services"][0]
    by_node = {n: g for g in svc["nodes"] for n in g["nodes"]}
    with_pod = by_node["node-a1"]
    assert not with_pod["masquerade"] and [e["pod"] for e in with_pod["endpoints"]] == ["accounts-0"]
    without = by_node["node-c1"]
    assert without["dropped"] and not without["endpoints"]
    chains = {s["chain"] for s in without["steps"]}
    if flavour == "legacy":
        assert any(c.startswith("KUBE-XLB-") for c in chains) and "KUBE-FIREWALL" in chains
    else:
        assert "KUBE-EXTERNAL-SERVICES" in chains
        assert any(s["chain"].startswith("KUBE-SVL-") for s in with_pod["steps"])
    # rules only for pods or the node itself are shown but marked as not applying
    assert any(not s["applies"] and s["note"] for s in without["steps"])


def test_explain_unknown_service_or_node_is_an_input_error():
    topo = load_topology(TOPOLOGIES / "default.yaml")
    with pytest.raises(InputError, match="unknown service 'nope'; services: accounts, catalog"):
        explain(topo, "nope")
    with pytest.raises(InputError, match="unknown node 'node-z9'"):
        explain(topo, None, "node-z9")


# --- diagnose thresholds (pure parts) ---


def _sample(drop: int = 0, insert_failed: int = 0, rules: list[RuleCounter] | None = None) -> dg._Sample:
    return dg._Sample(conntrack={"drop": drop, "insert_failed": insert_failed, "early_drop": 0}, rules=rules or [])


def test_diagnose_full_conntrack_table_is_critical_and_names_conntrack_s():
    checks = dg._conntrack_checks(_sample(drop=10), _sample(drop=25), {"count": 257000, "max": 262144}, 1.0, "")
    full = next(c for c in checks if c.id == "conntrack-full")
    assert full.severity == "critical" and full.title.startswith("conntrack table 98% full")
    assert "new SYNs are being dropped" in full.title and "`conntrack -S` drop=25 (+15 in the last 1 s)" in full.detail
    assert "conntrack -S" in full.command
    assert next(c for c in checks if c.id == "conntrack-drop").severity == "critical"


def test_diagnose_healthy_conntrack_and_rules_raise_nothing_alarming():
    rules = [
        RuleCounter("filter", "KUBE-FORWARD", 0, 0, "-m conntrack --ctstate INVALID -j DROP"),
        RuleCounter("nat", "KUBE-POSTROUTING", 3, 180, '-m comment --comment "x" -j MASQUERADE --random-fully'),
    ]
    checks = dg._conntrack_checks(_sample(), _sample(), {"count": 12, "max": 262144}, 1.0, "")
    checks += dg._rule_checks(_sample(rules=rules), _sample(rules=rules), {}, 1.0, "")
    assert checks and all(c.severity not in dg.ALARMING for c in checks), [c.title for c in checks]


def test_diagnose_legacy_rules_get_information_not_alarms():
    rules = [RuleCounter("nat", "KUBE-POSTROUTING", 3, 180, "-m mark --mark 0x4000/0x4000 -j MASQUERADE")]
    checks = dg._rule_checks(_sample(rules=rules), _sample(rules=rules), {}, 1.0, "lab exec node-a1 -- ")
    ids = {c.id: c for c in checks}
    assert ids["invalid-rule-missing"].severity == "info" and ids["masquerade-not-random"].severity == "info"
    assert ids["invalid-rule-missing"].command.startswith("lab exec node-a1 -- iptables-save -c")


def test_diagnose_drops_by_kube_rules_are_warnings_with_the_chain():
    drop = '-m comment --comment "default/accounts:thrift has no local endpoints" -m tcp -p tcp --dport 30090 -j DROP'
    a = [RuleCounter("filter", "KUBE-EXTERNAL-SERVICES", 4, 240, drop)]
    b = [RuleCounter("filter", "KUBE-EXTERNAL-SERVICES", 6, 360, drop)]
    checks = dg._rule_checks(_sample(rules=a), _sample(rules=b), {}, 1.0, "")
    hit = next(c for c in checks if c.id == "dropped:KUBE-EXTERNAL-SERVICES")
    assert (
        hit.severity == "warning"
        and "6 packets (+2 in the last 1 s)" in hit.title
        and "no local endpoints" in hit.title
    )


# --- diagrams ---


def _result(ok: bool = True) -> TraceResult:
    hops = [
        Hop("client", "apollo-1", None, "client", address="10.10.0.10"),
        Hop("elb", "elb-a1", "us-east-1a", "elb", address="172.20.64.5:9090",
            evidence={"backend_connection": "172.20.64.5:40000 -> 172.20.64.16:30090"}),
        Hop("node", "node-a1", "us-east-1a", "node", address="172.20.64.16:30090", problem=not ok),
        Hop("transit", "node-b1", "us-east-1b", "transit", address="172.20.128.16",
            evidence={"conntrack": {"original": "172.20.64.16:5000 -> 100.96.2.2:9090"}}),
        Hop("pod", "accounts-1", "us-east-1b", "pod", address="100.96.2.2:9090"),
        Hop("reply", "node-a1", "us-east-1a", "reply"),
    ]  # fmt: skip
    summary = {
        "client": "10.10.0.10:1234",
        "address": "172.20.64.5:9090",
        "instance": "node-a1",
        "dnat_to": "100.96.2.2:9090",
        "snat": True,
        "snat_to": "172.20.64.16:5000",
        "azs": ["us-east-1a", "us-east-1b", "us-east-1c"],
    }
    return TraceResult("t", "accounts", "elb", ok, None if ok else "connect failed", hops, summary)


def test_mermaid_has_one_subgraph_per_zone_and_the_tuples_on_the_arrows():
    text = mermaid(_result())
    assert text.startswith("flowchart LR")
    assert 'subgraph z0["client VPC"]' in text and '["AZ us-east-1a"]' in text and '["AZ us-east-1b"]' in text
    assert "us-east-1c" not in text  # no hop there: no empty subgraph
    assert 'h0 -->|"10.10.0.10:1234 -> 172.20.64.5:9090"| h1' in text
    assert 'h2 -->|"after NAT: 172.20.64.16:5000 -> 100.96.2.2:9090"| h3' in text
    assert "-.->" in text  # the reply


def test_failed_trace_marks_the_problem_hop_and_draws_no_reply():
    boxes, edges, zones = layout(_result(ok=False))
    assert [b.problem for b in boxes] == [False, False, True, False, False]
    assert not any(e.reply for e in edges)
    assert "classDef problem" in mermaid(_result(ok=False))


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_diagram_image_is_written(tmp_path, suffix):
    path = render_image(_result(), tmp_path / f"trace{suffix}")
    data = path.read_bytes()
    assert len(data) > 1000
    if suffix == ".svg":
        assert b"<svg" in data and b"us-east-1b" in data
    else:
        assert data.startswith(b"\x89PNG")


def test_diagram_with_another_suffix_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="must end in .svg or .png"):
        render_image(_result(), tmp_path / "trace.pdf")


# --- CLI ---


@pytest.mark.parametrize("cmd", ["trace", "explain", "diagnose"])
def test_teach_commands_have_help_with_examples(cmd):
    result = runner.invoke(app, [cmd, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and f"lab {cmd}" in result.output


def test_explain_a_topology_file_without_a_lab():
    result = runner.invoke(app, ["explain", "catalog", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kube_proxy"] == "legacy" and [s["name"] for s in data["services"]] == ["catalog"]
    text = runner.invoke(app, ["explain", "-t", str(TOPOLOGIES / "default.yaml"), "--node", "node-b1"])
    assert text.exit_code == 0 and "on node-b1" in text.output and "KUBE-SEP-" in text.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["explain", "nope", "-t", "topologies/default.yaml"],
            "Error: unknown service 'nope'; services: accounts, catalog",
        ),
        (["explain", "--set", "nodes_per_az=2"], "Error: --set needs -t FILE (a running lab's topology is fixed)"),
        (["diagnose"], "Error: give a lab HOST or --local (not both); e.g. `lab diagnose node-a1`"),
        (
            ["diagnose", "node-a1", "--local"],
            "Error: give a lab HOST or --local (not both); e.g. `lab diagnose node-a1`",
        ),
        (["diagnose", "--local", "--interval", "99"], "Error: --interval 99: must be between 0 and 60 seconds"),
    ],
)
def test_teach_bad_input_is_one_line(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == message


def test_diagnose_of_a_host_whose_namespace_is_gone_is_an_error_not_a_healthy_verdict():
    from lab.errors import LabError
    from lab.hosts import Host

    gone = Host(name="node-a1", role="node", netns="/run/netns/lab.nosuchlab.node-a1")
    with pytest.raises(LabError, match="node-a1: its network namespace .* is gone"):
        dg.diagnose(gone, interval=0)
