"""Faults without root: parameters, targets, the steps each kind plans, the netem requests, the CLI surface."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.errors import InputError
from lab.faults import engine
from lab.faults.kinds import KINDS, LinkParams, get_kind
from lab.faults.model import FaultRecord, Step, parse_fraction, parse_params, parse_rate, show_params
from lab.faults.ops import OPS, TC_HANDLE, filler_lines
from lab.faults.store import FaultStore
from lab.lab import Lab
from lab.spec import load_topology
from lab.state import LabState
from tests.conftest import TOPOLOGIES

runner = CliRunner()


@pytest.fixture(scope="module")
def lab() -> Lab:
    """A lab object (topology, plan, host handles) that is not up: planning needs no namespace."""
    return Lab(name="unit", topology=load_topology(TOPOLOGIES / "default.yaml"))


def plan(lab: Lab, kind: str, target: str | None, params: list[str]):
    k = get_kind(kind)
    p = parse_params(kind, k.params, params)
    return k.plan(lab, 7, k.resolve(lab, target, p), p)


def lines(lab: Lab, kind: str, target: str | None, params: list[str]) -> list[str]:
    return [OPS[s.op].describe(s) for s in plan(lab, kind, target, params).steps]


# --- parameters ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("1%", 0.01), ("0.5%", 0.005), ("0.2", 0.2), (0, 0.0), ("100%", 1.0)])
def test_fractions(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["150%", "-1%", "lots", "1.5"])
def test_bad_fractions(text):
    with pytest.raises(ValueError):
        parse_fraction(text)


@pytest.mark.parametrize(
    ("text", "bits"), [("10mbit", 10_000_000), ("512kbit", 512_000), ("1gbit", 10**9), ("2mbps", 16_000_000)]
)
def test_rates(text, bits):
    assert parse_rate(text) == bits


def test_params_parse_durations_and_flags():
    p = parse_params("link", LinkParams, ["delay=50ms", "jitter=5ms", "loss=1%", "reorder=on"])
    assert (p.delay, p.jitter, p.loss, p.reorder) == (0.05, 0.005, 0.01, True)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["delay=abc"], "fault link: parameter delay=abc: expected a duration such as 10s"),
        (["loss=2"], "fault link: parameter loss=2: must be from 0% to 100% (see `lab fault list`)"),
        (["delay=5ms", "jitter=9ms"], "fault link: jitter must not exceed the delay"),
        (["speed=1"], "fault link: unknown parameter 'speed'; parameters: delay, jitter, loss"),
        (["delay"], "fault link: parameter 'delay' is not KEY=VALUE"),
        ([], "fault link: give at least one of delay, loss, bandwidth, partition"),
        (["bandwidth=1bit"], "fault link: parameter bandwidth=1bit: must be from 8kbit to 100gbit"),
        (["partition=on", "loss=1%"], "fault link: partition drops everything: give it alone"),
    ],
)
def test_bad_params_are_one_clear_line(params, message):
    with pytest.raises(InputError) as err:
        parse_params("link", LinkParams, params)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(InputError, match=r"unknown fault kind 'x'; kinds: conntrack-exhaustion, healthcheck-misroute"):
        get_kind("x")


def test_every_issue_kind_exists_with_an_example():
    assert set(KINDS) == {
        "conntrack-exhaustion",
        "healthcheck-misroute",
        "cross-az",
        "link",
        "conntrack-invalid",
        "snat-port-range",
        "stale-endpoints",
        "syn-backlog",
        "elb-idle-timeout",
    }
    for row in engine.list_kinds():
        assert row["example"].startswith(f"lab fault apply {row['kind']}")
        assert all(p["help"] for p in row["params"])


def test_show_params_uses_units():
    assert show_params({"delay": 0.05, "loss": 0.01, "peering": True, "fresh": ["a", "b"]}) == (
        "delay=50ms loss=1% peering=on fresh=a,b"
    )


# --- targets and plans ----------------------------------------------------------------------------------------------


def test_unknown_target_names_the_choices(lab):
    with pytest.raises(InputError, match=r"unknown target 'node-z1': not a node of this lab; choose one of: node-a1"):
        plan(lab, "conntrack-exhaustion", "node-z1", [])
    with pytest.raises(InputError, match=r"--target is required: a link"):
        plan(lab, "link", None, ["loss=1%"])


def test_cross_az_delay_queues_every_az_pair_on_the_cluster_router(lab):
    p = plan(lab, "cross-az", None, ["delay=50ms", "jitter=4ms", "engine=nfqueue"])
    assert p.engine == "nfqueue"
    helper, rules = p.steps
    assert helper.host == rules.host == "rt-cluster"
    assert helper.args["argv"][:8] == [
        "@nfqdelay",
        "--queue",
        "7",
        "--delay-us",
        "25000",
        "--jitter-us",
        "2000",
        "--seed",
    ]
    forward = rules.args["tables"]["mangle"]
    assert forward["hooks"] == [["FORWARD", ""]]
    assert len(forward["rules"]) == 6  # 3 AZs: every ordered pair
    assert "-i br-us-east-1a -o br-us-east-1b -j NFQUEUE --queue-num 7 --queue-bypass" in forward["rules"]


def test_cross_az_target_and_peering_narrow_the_pairs(lab):
    p = plan(lab, "cross-az", "us-east-1c", ["loss=1%", "peering=on"])
    rules = p.steps[-1].args["tables"]["mangle"]["rules"]
    assert all("us-east-1c" in r for r in rules)
    assert any(r.startswith("-i peering -o br-us-east-1c") for r in rules)
    assert p.engine is None  # no delay: nothing to choose


def test_cross_az_netem_classifies_by_source(lab):
    p = plan(lab, "cross-az", None, ["delay=50ms", "engine=nfqueue"])
    assert all(s.op != "tc" for s in p.steps)
    from lab.faults import kinds

    netem = kinds._classified_netem(parse_params("cross-az", kinds.CrossAzParams, ["delay=50ms"]))
    assert [q["kind"] for q in netem] == ["htb", "htb", "htb", "netem"]
    assert netem[-1]["params"] == {"delay": 25000, "jitter": 0}


def test_link_faults_act_at_the_far_end_of_the_link(lab):
    p = plan(lab, "link", "node-a1", ["loss=2%", "bandwidth=10mbit"])
    rules, tc_a, tc_b = p.steps
    assert rules.host == "node-a1"
    assert rules.args["tables"]["raw"] == {
        "hooks": [["PREROUTING", "-i eth0"]],
        "rules": ["-m statistic --mode random --probability 0.020000 -j DROP"],
    }
    assert (tc_a.host, tc_a.args["ifname"], tc_b.host, tc_b.args["ifname"]) == (
        "rt-cluster",
        "node-a1",
        "node-a1",
        "eth0",
    )
    assert tc_a.args["chain"][0]["kind"] == "tbf" and tc_a.args["chain"][0]["params"]["rate"] == "10000000bit"


def test_partition_drops_everything(lab):
    p = plan(lab, "link", "peering", ["partition=on"])
    assert p.steps[0].host == "rt-cluster"
    assert p.steps[0].args["tables"]["mangle"]["rules"] == ["-j DROP"]


def test_misroute_variants(lab):
    first = lines(lab, "healthcheck-misroute", "node-b1", [])
    assert first == [
        "node-b1: iptables filter: LAB-FAULT-7 from INPUT, FORWARD: -p tcp -m conntrack --ctstate NEW "
        "--ctorigdstport 30091 -j REJECT --reject-with tcp-reset"
    ]
    local = plan(lab, "healthcheck-misroute", None, ["variant=local-no-endpoints"])
    assert local.steps[0].args == {"nodes": ["node-a1", "node-b1", "node-c1"], "local": ["catalog"]}
    wrong = lines(lab, "healthcheck-misroute", "node-a1", ["variant=wrong-port", "effect=drop"])
    assert sum("responder --port 10256" in ln for ln in wrong) == 3
    assert "elb-a1: health check of node-a1 moved to port 10256" in wrong
    assert wrong[-1].endswith("--ctorigdstport 30090 -j DROP")


def test_misroute_refuses_the_checked_service(lab):
    with pytest.raises(InputError, match="the health check covers the first listener's service"):
        plan(lab, "healthcheck-misroute", "node-a1", ["service=accounts"])
    with pytest.raises(InputError, match="takes no --target"):
        plan(lab, "healthcheck-misroute", "node-a1", ["variant=local-no-endpoints"])


def test_stale_endpoints_and_backlog_and_idle(lab):
    assert lines(lab, "stale-endpoints", "accounts-0", ["fresh=node-b1", "mode=blackhole"]) == [
        "accounts-0: stop the pod's server (kube-proxy is not told)",
        "accounts-0: iptables raw: LAB-FAULT-7 from PREROUTING -i eth0: -j DROP",
        "node-b1: re-sync kube-proxy without the endpoints of accounts-0",
    ]
    with pytest.raises(InputError, match="unknown node 'node-q'"):
        plan(lab, "stale-endpoints", "accounts-0", ["fresh=node-q"])
    assert lines(lab, "syn-backlog", "catalog", ["backlog=2"]) == [
        "catalog-0: restart the pod's server with backlog=2 accept_delay=0.2",
        "catalog-1: restart the pod's server with backlog=2 accept_delay=0.2",
    ]
    assert lines(lab, "elb-idle-timeout", None, ["timeout=4s"])[0] == "elb-a1: ELB idle timeout 4s (HAProxy restarted)"


def test_conntrack_kinds(lab):
    assert lines(lab, "conntrack-exhaustion", "node-c1", ["free=10"]) == [
        "node-c1: conntrack: insert ASSURED filler entries until 10 slots are left, mark 0x1ab00007",
        "node-c1: run python -m lab.faults.keeper --fault 7 --free 10",
    ]
    # a ceiling without max= is the node's own table size as kube-proxy set it (the topology's conntrack max)
    kind = get_kind("conntrack-exhaustion")
    ceiling = kind.plan(lab, 7, "node-c1", parse_params(kind.name, kind.params, ["mode=ceiling"]))
    assert ceiling.steps[0].args["ceiling"] == lab.topology.conntrack_max == 131072
    assert len(ceiling.steps) == 1  # at full scale the kernel's own collector frees expired entries
    quick = Lab(name="unit", topology=lab.topology, time_scale=0.1)
    ceiling = kind.plan(quick, 7, "node-c1", parse_params(kind.name, kind.params, ["mode=ceiling", "max=150"]))
    assert [OPS[s.op].describe(s) for s in ceiling.steps][1] == (
        "node-c1: run python -m lab.faults.reaper --fault 7 --period 6"  # its 60 s, scaled with the run
    )
    inv = plan(lab, "conntrack-invalid", "accounts-1", ["rate=5%"])
    assert inv.steps[0].args["argv"][:5] == ["@nfqdelay", "--queue", "7", "--mangle-seq", "0.050000"]
    assert inv.steps[1].args["tables"]["mangle"]["rules"] == [
        "-p tcp --sport 9090 -j NFQUEUE --queue-num 7 --queue-bypass"
    ]


def test_snat_port_range_narrows_kube_proxys_masquerade_keeping_the_flavour(lab):
    # The default topology is modern: its masquerade keeps --random-fully, only the ports change.
    assert lines(lab, "snat-port-range", "node-b1", ["ports=2"]) == [
        "node-b1: iptables nat: LAB-FAULT-7 from POSTROUTING: -p tcp -m mark --mark 0x00004000/0x00004000 "
        "-j MASQUERADE --to-ports 40000-40001 --random-fully"
    ]
    legacy = Lab(name="unit", topology=load_topology(TOPOLOGIES / "seed-2017.yaml"))
    steps = plan(legacy, "snat-port-range", None, ["ports=64", "first=1024"]).steps
    assert [s.host for s in steps] == ["node-a1", "node-b1", "node-c1"]  # default: every node
    assert steps[0].args["tables"]["nat"]["rules"] == [
        "-p tcp -m mark --mark 0x00004000/0x00004000 -j MASQUERADE --to-ports 1024-1087"
    ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (["ports=0"], "parameter ports=0"),
        (["first=80"], "parameter first=80"),
        (["first=65535", "ports=2"], "first + ports - 1 must be at most 65535 (got 65536)"),
    ],
)
def test_snat_port_range_params_are_checked(params, message):
    kind = get_kind("snat-port-range")
    with pytest.raises(InputError, match=re.escape(message)):
        parse_params(kind.name, kind.params, params)


def test_filler_entries_are_unique_marked_and_outside_the_lab():
    text = filler_lines(3, 70000)
    rows = text.splitlines()
    assert len(rows) == len(set(rows)) == 70000
    assert rows[0] == (
        "-I -s 198.18.0.0 -d 198.19.0.3 -p tcp --sport 1024 --dport 9 --state ESTABLISHED -u ASSURED -t 86400 "
        "--mark 447741955"
    )
    assert rows[65536].startswith("-I -s 198.18.0.0 -d 198.19.0.3 -p tcp --sport 1025 ")


# --- ops without a kernel ----------------------------------------------------------------------------------------


class FakeIPRoute:
    """Records tc requests (this kernel has no sch_netem, so the netem path is checked by its requests)."""

    def __init__(self, root=None):
        self.calls: list[tuple] = []
        self.root = root

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def link_lookup(self, ifname):
        return [5]

    def get_qdiscs(self, index):
        return [self.root] if self.root else []

    def tc(self, *args, **kwargs):
        self.calls.append((args, kwargs))


class FakeHost:
    netns = "/nonexistent"


class FakeLab:
    def host(self, name):
        return FakeHost()


def test_netem_requests(monkeypatch):
    from lab.faults import kinds

    ipr = FakeIPRoute()
    monkeypatch.setattr("lab.faults.ops.Qdisc._ipr", lambda self, host: ipr)
    params = parse_params("link", LinkParams, ["delay=40ms", "jitter=10ms", "bandwidth=100mbit"])
    step = Step("tc", "node-a1", {"ifname": "eth0", "chain": kinds._netem(params, params.bandwidth)})
    OPS["tc"].apply(FakeLab(), step)
    (tbf_args, tbf), (netem_args, netem) = ipr.calls
    assert tbf_args == ("add", "tbf") and tbf["handle"] == TC_HANDLE and tbf["parent"] == 0xFFFFFFFF
    assert netem_args == ("add", "netem") and netem["parent"] == TC_HANDLE | 1
    assert (netem["delay"], netem["jitter"]) == (20000, 5000)  # microseconds, each way


def test_classified_netem_requests(monkeypatch):
    from lab.faults import kinds

    ipr = FakeIPRoute()
    monkeypatch.setattr("lab.faults.ops.Qdisc._ipr", lambda self, host: ipr)
    params = parse_params("cross-az", kinds.CrossAzParams, ["delay=30ms"])
    step = Step("tc", "rt-cluster", {"ifname": "br-us-east-1a", "chain": kinds._classified_netem(params),
                                     "filters": ["172.20.128.0/18"]})  # fmt: skip
    OPS["tc"].apply(FakeLab(), step)
    verbs = [c[0][0] for c in ipr.calls]
    assert verbs == ["add", "add-class", "add-class", "add", "add-filter"]
    assert ipr.calls[-1][1]["keys"] == ["0xac148000/0xffffc000+12"] and ipr.calls[-1][1]["target"] == TC_HANDLE | 2


def test_a_foreign_root_qdisc_is_not_replaced(monkeypatch):
    class Root(dict):
        def get_attr(self, name):
            return "fq_codel"

    monkeypatch.setattr(
        "lab.faults.ops.Qdisc._ipr", lambda self, host: FakeIPRoute(Root(parent=0xFFFFFFFF, handle=0x10000))
    )
    with pytest.raises(Exception, match="already has a fq_codel root qdisc"):
        OPS["tc"].capture(FakeLab(), Step("tc", "node-a1", {"ifname": "eth0", "chain": []}))


def test_store_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr("lab.state.STATE_ROOT", tmp_path)
    state = LabState("unit")
    state.dir.mkdir()
    store = FaultStore(state)
    rec = FaultRecord(7, "link", "node-a1", {"loss": 0.01}, "Injected", 1.0, [Step("iptables", "node-a1", {"x": 1})])
    with store.locked():
        store.put(rec)
    assert store.load() == [rec] and store.next_id() == 8
    assert json.loads(store.path.read_text())["faults"][0]["steps"][0]["op"] == "iptables"


# --- CLI -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["list", "apply", "revert", "status"])
def test_fault_commands_have_help_with_an_example(cmd):
    result = runner.invoke(app, ["fault", cmd, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and f"lab fault {cmd}" in result.output


def test_fault_list_needs_no_lab():
    result = runner.invoke(app, ["fault", "list", "--json"])
    assert result.exit_code == 0
    assert [k["kind"] for k in json.loads(result.output)][0] == "conntrack-exhaustion"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["fault", "apply", "jam"],
            "Error: unknown fault kind 'jam'; kinds: conntrack-exhaustion, healthcheck-misroute",
        ),
        (["fault", "apply", "link", "loss=3"], "Error: fault link: parameter loss=3: must be from 0% to 100%"),
        (["fault", "apply", "cross-az", "delay=1s", "--duration", "soon"], "Error: --duration: expected a duration"),
        (["fault", "revert"], "Error: give fault ids or --all"),
    ],
)
def test_bad_fault_input_is_one_line_without_a_lab(args, line, monkeypatch, tmp_path):
    monkeypatch.setattr("lab.state.STATE_ROOT", tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    out = result.output.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(line), result.output
