"""The trace's hop builders on recorded evidence (tests/fixtures/trace/*.json, recorded from real labs by
tests/fixtures/trace/record.py): what each hop tells, without a lab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.teach import hops
from lab.teach.tracedata import Evidence
from tests.conftest import REPO, single_error

FIXTURES = REPO / "tests" / "fixtures" / "trace"


def evidence(name: str) -> Evidence:
    return Evidence.from_json(json.loads((FIXTURES / name).read_text()))


def hop(result, kind: str):
    return next(h for h in result.hops if h.kind == kind)


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_evidence_round_trips_through_json(name):
    data = json.loads((FIXTURES / name).read_text())
    assert Evidence.from_json(data).to_json() == data


def test_a_healthy_connection_through_the_elb_crossing_to_a_pod_on_another_node():
    ev = evidence("ok-elb-default.json")
    result = hops.assemble(ev)
    assert result.ok and result.error is None
    assert [h.kind for h in result.hops] == ["client", "elb", "node", "transit", "pod", "reply"]
    s, who = result.summary, ev.attempt.who
    assert s["instance"] == ev.entry[0] == "node-a1" and s["elb_node"] == "elb-a1"
    assert s["dnat_to"] == f"{who['pod_ip']}:9090" and s["pod"] == who["pod"]
    assert s["snat"] is True and s["snat_to"] == f"{who['client_ip']}:{who['client_port']}"
    assert s["cross_az"] is True  # node-a1 (us-east-1a) -> a pod on node-b1 (us-east-1b)
    node = hop(result, "node")
    dnat = [r for r in node.rules if "DNAT" in r["rule"]]
    assert len(dnat) == 1 and dnat[0]["counter_delta"] >= 1 and s["chains"][-1] == "KUBE-POSTROUTING"
    assert any(line.startswith("SNAT (MASQUERADE)") for line in node.says)
    assert "node node-a1's address (SNAT)" in hop(result, "pod").says[-1]
    assert hop(result, "transit").says[0].endswith("crossing from us-east-1a to us-east-1b.")
    assert "undoes both rewrites" in hop(result, "reply").says[0]


def test_legacy_kube_proxy_through_a_nodeport_has_no_elb_hop_and_no_ext_chain():
    result = hops.assemble(evidence("ok-node-seed-legacy.json"))
    assert result.ok
    assert "elb" not in [h.kind for h in result.hops]
    chains = result.summary["chains"]
    assert "KUBE-NODEPORTS" in chains and not any(c.startswith("KUBE-EXT-") for c in chains)


def test_local_policy_on_a_node_without_a_pod_stops_at_the_drop_rule():
    result = hops.assemble(evidence("local-policy-drop.json"))
    assert not result.ok and "dropped by filter KUBE-EXTERNAL-SERVICES" in result.error
    node = hop(result, "node")
    assert node.problem and node.rules[-1]["verdict"] == "DROP"
    assert node.rules[-1]["chain"] == "KUBE-EXTERNAL-SERVICES"
    assert "pod" not in [h.kind for h in result.hops] and result.summary["dnat_to"] is None


def test_a_refused_connection_shows_each_elb_retry_and_who_refused():
    result = hops.assemble(evidence("refused-elb.json"))
    assert not result.ok
    elb = hop(result, "elb")
    assert elb.problem and elb.evidence["log"]["termination"] == "SC"
    retries = elb.evidence["log"]["retries"]
    attempts = [line for line in hop(result, "node").says if line.startswith("attempt ")]
    assert len(attempts) == retries + 1 and all("answered with a RST" in a for a in attempts)


def test_a_full_conntrack_table_is_named_with_the_nodes_own_counters():
    result = hops.assemble(evidence("conntrack-full.json"))
    node = hop(result, "node")
    assert node.problem and result.summary["chains"] == []
    stop = next(line for line in node.says if line.startswith("It stops here"))
    assert "never reached the nat table" in stop and "`conntrack -S` drop=" in stop
    assert result.error.startswith("connect failed: timed out; node-a1: the SYN arrived")


def test_an_elb_node_without_healthy_instances_says_why_from_its_health_view():
    result = hops.assemble(evidence("no-instance-elb.json"))
    elb = hop(result, "elb")
    assert elb.evidence["log"]["instance"] == "<NOSRV>"
    assert "It had no instance to send to" in elb.says[-1] and "OutOfService" in elb.says[-1]
    assert result.summary["instance"] is None and [h.kind for h in result.hops] == ["client", "elb"]


def test_each_builder_stays_out_of_a_path_it_has_no_evidence_for():
    ev = evidence("ok-node-seed-legacy.json")
    story = hops.new_story(ev)
    assert hops.elb_hop(story) is None  # --via node: no ELB
    ev.transit = None
    assert hops.transit_hop(hops.new_story(ev)) is None
    ev.entry, ev.attempt.who = None, None
    story = hops.new_story(ev)
    assert hops.pod_hop(story) is None and hops.reply_hop(story) is None
    assert hops.node_hop(story) is None  # no instance known yet: assemble sets it


def test_a_recorded_trace_is_told_again_by_the_cli_without_a_lab():
    path = FIXTURES / "ok-elb-default.json"
    result = CliRunner().invoke(app, ["trace", "accounts", "--evidence", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] and data["mermaid"].startswith("flowchart LR")
    assert [h["kind"] for h in data["hops"]] == ["client", "elb", "node", "transit", "pod", "reply"]
    text = CliRunner().invoke(app, ["trace", "accounts", "--evidence", str(path)])
    assert text.exit_code == 0 and "accounts-1" in text.output


def test_a_file_that_is_not_trace_evidence_is_one_error_line(tmp_path: Path):
    bad = tmp_path / "x.json"
    bad.write_text('{"lab": 1}')
    line = single_error(CliRunner().invoke(app, ["trace", "accounts", "--evidence", str(bad)]))
    assert line.startswith(f"Error: {bad}: not a trace evidence file")


def test_evidence_of_another_service_is_refused():
    path = FIXTURES / "ok-elb-default.json"
    line = single_error(CliRunner().invoke(app, ["trace", "catalog", "--evidence", str(path)]))
    assert line == f"Error: --evidence {path}: it traced service 'accounts', not 'catalog'"
