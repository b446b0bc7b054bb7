"""Golden files for the address plan and haproxy.cfg, and what an ELB node must and must not contain."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render.haproxy import HaproxyPaths, render_haproxy
from lab.render.healthcheck import AGENT_PORT, checker_config, render_checker, with_port
from lab.render.plan import build_plan, conntrack_sysctls, describe, socket_sysctls
from tests.conftest import TOPOLOGIES, assert_golden

PATHS = HaproxyPaths(stats_socket=Path("/run/lab/x/run/elb.sock"), pid_file=Path("/run/lab/x/run/elb.pid"))
VARIANTS = {
    "default": ("default.yaml", []),
    "seed-2017": ("seed-2017.yaml", []),
    "seed-2017-9": ("seed-2017.yaml", ["nodes_per_az=3", "elb.cross_zone=true"]),
}


def load(file: str, overrides: list[str]) -> Topology:
    return load_model(Topology, TOPOLOGIES / file, overrides)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_plan_golden(variant):
    topo = load(*VARIANTS[variant])
    assert_golden(f"plan/{variant}.txt", describe(build_plan(topo)))


def test_plan_golden_quick():
    """A quick run's plan: every conntrack TCP state timeout and socket timer the lab sets, scaled by 0.1."""
    topo = load("seed-2017.yaml", [])
    assert_golden("plan/seed-2017-quick.txt", describe(build_plan(topo, time_scale=0.1)))


def test_full_scale_plan_leaves_the_kernel_defaults_alone():
    topo = load("seed-2017.yaml", [])
    keys = {key for _host, key, _value in build_plan(topo).sysctls}
    assert "net.netfilter.nf_conntrack_tcp_timeout_syn_sent" not in keys
    assert not any(key.startswith("net.ipv4.tcp_") for key in keys)
    assert socket_sysctls(1.0) == []


def test_quick_plan_scales_every_conntrack_tcp_timeout_on_every_node():
    topo = load("seed-2017.yaml", ["kube_proxy.conntrack.tcp_timeout_time_wait=30s"])
    plan = build_plan(topo, time_scale=0.1)
    for node in topo.k8s_nodes:
        prefix = "net.netfilter.nf_conntrack_tcp_timeout_"
        mine = {key.removeprefix(prefix): value for host, key, value in plan.sysctls
                if host == node.name and key.startswith(prefix)}  # fmt: skip
        assert mine == {
            "established": "8640",  # kube-proxy's 24 h
            "close_wait": "360",  # kube-proxy's 1 h
            "time_wait": "3",  # the topology's 30 s
            "syn_sent": "12",
            "syn_recv": "6",
            "fin_wait": "12",
            "last_ack": "3",
            "close": "1",
            "max_retrans": "30",
            "unacknowledged": "30",
        }


def test_retry_counts_give_up_near_the_scaled_time():
    # 6 SYN retries give up after 127 s; x0.1 = 12.7 s: 3 retries (15 s) is nearer than 2 (7 s).
    assert dict(socket_sysctls(0.1))["net.ipv4.tcp_syn_retries"] == "3"
    # 5 SYN-ACK retries: 63 s; x0.1 = 6.3 s: 2 retries (7 s).
    assert dict(socket_sysctls(0.1))["net.ipv4.tcp_synack_retries"] == "2"
    assert dict(socket_sysctls(0.5))["net.ipv4.tcp_syn_retries"] == "5"  # 63 s for 63.5 s
    assert dict(socket_sysctls(0.001))["net.ipv4.tcp_syn_retries"] == "1"  # never below one retry


def test_scaled_timers_never_reach_zero():
    topo = load("seed-2017.yaml", [])
    values = [int(v) for _k, v in conntrack_sysctls(topo, 0.001) if "timeout" in _k]
    assert min(values) == 1  # CLOSE's 10 s x 0.001: the kernel reads 0 as "expire now"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_haproxy_golden(variant):
    topo = load(*VARIANTS[variant])
    plan = build_plan(topo)
    for elb in topo.elb_nodes:
        assert_golden(f"haproxy/{variant}-{elb.name}.cfg", render_haproxy(topo, plan, elb, PATHS))


def test_one_shared_health_check_per_instance_on_the_first_listeners_nodeport():
    topo = load("seed-2017.yaml", ["nodes_per_az=3", "elb.cross_zone=true"])
    plan = build_plan(topo)
    cfg = render_haproxy(topo, plan, topo.elb_nodes[0], PATHS)
    health = cfg.split("backend elb-health")[1].split("frontend")[0]
    servers = [ln for ln in health.splitlines() if ln.strip().startswith("server")]
    assert len(servers) == 9  # one per instance, not one per instance per listener
    assert all(":31001 agent-send" in ln for ln in servers)  # accounts is the first listener
    checker = checker_config(topo, plan, topo.elb_nodes[0])
    assert [t["port"] for t in checker["targets"]] == [31001] * 9  # the checker connects there
    tracked = [ln for ln in cfg.splitlines() if "track elb-health/" in ln]
    assert len(tracked) == 9 * 3  # every listener's servers follow that one check


def test_haproxy_never_checks_an_instance_itself_it_asks_the_checker_on_loopback():
    topo = load("default.yaml", [])
    cfg = render_haproxy(topo, build_plan(topo), topo.elb_nodes[0], PATHS)
    servers = [ln.split() for ln in cfg.splitlines() if ln.strip().startswith("server")]
    assert servers and not any("check" in words for words in servers)  # no HAProxy check on any server
    assert f"agent-check agent-addr 127.0.0.1 agent-port {AGENT_PORT} agent-inter 1000ms" in cfg
    assert 'server node-a1 172.20.64.16:30090 agent-send "node-a1\\n"' in cfg


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_checker_golden(variant):
    topo = load(*VARIANTS[variant])
    plan = build_plan(topo)
    for elb in topo.elb_nodes:
        assert_golden(f"healthcheck/{variant}-{elb.name}.json", render_checker(topo, plan, elb))


def test_checker_spreads_each_instances_checks_over_the_interval():
    topo = load("seed-2017.yaml", ["nodes_per_az=3", "elb.cross_zone=true"])
    plan = build_plan(topo)
    offsets = sorted(t["offset_s"] for e in topo.elb_nodes for t in checker_config(topo, plan, e)["targets"])
    assert len(offsets) == 27 and len(set(offsets)) == 27  # no two checks start at once
    assert offsets[0] == 0 and max(offsets) < 10
    node_a1 = [t["offset_s"] for e in topo.elb_nodes for t in checker_config(topo, plan, e)["targets"]
               if t["instance"] == "node-a1"]  # fmt: skip
    assert len(node_a1) == 3 and max(node_a1) - min(node_a1) < 10 / 9  # the ELB nodes' checks of one instance


def test_checker_time_scale_and_the_misroute_port_move():
    topo = load("default.yaml", [])
    plan = build_plan(topo)
    cfg = checker_config(topo, plan, topo.elb_nodes[0], time_scale=0.1)
    assert (cfg["interval_s"], cfg["timeout_s"], cfg["unhealthy_threshold"], cfg["healthy_threshold"]) == (1, 0.5, 6, 2)
    text = render_checker(topo, plan, topo.elb_nodes[0])
    moved = json.loads(with_port(text, ["node-a1"], 10256))
    assert {t["instance"]: t["port"] for t in moved["targets"]} == {"node-a1": 10256}
    assert with_port(with_port(text, ["node-a1"], 10256), ["node-a1"], 30090) == text  # revert is exact


def test_cross_zone_off_knows_only_its_own_az():
    topo = load("default.yaml", [])
    plan = build_plan(topo)
    cfg = render_haproxy(topo, plan, topo.elb_nodes[1], PATHS)
    assert "node-b1" in cfg and "node-a1" not in cfg and "node-c1" not in cfg


def test_time_scale_shrinks_elb_timers_and_says_so():
    topo = load("default.yaml", [])
    cfg = render_haproxy(topo, build_plan(topo), topo.elb_nodes[0], PATHS, time_scale=0.1)
    assert "agent-inter 100ms" in cfg and "timeout client 6000ms" in cfg
    assert "ELB timers scaled by 0.1" in cfg
    # The backend connect timeout races the kernel's SYN retransmits (1 s, 3 s): it stays real.
    assert "timeout connect 5000ms" in cfg.split("backend elb-health")[0]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (make setup)")
def test_rendered_configs_pass_haproxys_own_check(tmp_path):
    topo = load("seed-2017.yaml", ["nodes_per_az=2", "elb.max_connections_per_instance=100"])
    plan = build_plan(topo)
    paths = HaproxyPaths(stats_socket=tmp_path / "s.sock", pid_file=tmp_path / "p.pid")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy(topo, plan, topo.elb_nodes[0], paths))
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALERT" not in proc.stdout + proc.stderr
