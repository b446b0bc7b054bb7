"""Golden files for the address plan and haproxy.cfg, and what an ELB node must and must not contain."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render.haproxy import HaproxyPaths, render_haproxy
from lab.render.plan import build_plan, describe
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
    checks = [ln for ln in cfg.splitlines() if ln.strip().startswith("server") and " check" in ln]
    assert len(checks) == 9  # one per instance, not one per instance per listener
    assert all(ln.endswith(":31001 check") for ln in checks)  # accounts is the first listener
    tracked = [ln for ln in cfg.splitlines() if "track elb-health/" in ln]
    assert len(tracked) == 9 * 3  # every listener's servers follow that one check


def test_cross_zone_off_knows_only_its_own_az():
    topo = load("default.yaml", [])
    plan = build_plan(topo)
    cfg = render_haproxy(topo, plan, topo.elb_nodes[1], PATHS)
    assert "node-b1" in cfg and "node-a1" not in cfg and "node-c1" not in cfg


def test_time_scale_shrinks_elb_timers_and_says_so():
    topo = load("default.yaml", [])
    cfg = render_haproxy(topo, build_plan(topo), topo.elb_nodes[0], PATHS, time_scale=0.1)
    assert "inter 1000ms fall 6 rise 2" in cfg and "timeout client 6000ms" in cfg
    assert "ELB timers scaled by 0.1" in cfg


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
