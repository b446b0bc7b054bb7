"""The topology model: defaults, derived inventory, and one clear line for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.errors import InputError
from lab.models.topology import Topology
from lab.models.yamlio import load_model
from tests.conftest import TOPOLOGIES

DEFAULT = TOPOLOGIES / "default.yaml"
SEED = TOPOLOGIES / "seed-2017.yaml"


def load(path: Path = DEFAULT, *overrides: str) -> Topology:
    return load_model(Topology, path, list(overrides))


def error_of(path: Path = DEFAULT, *overrides: str) -> str:
    with pytest.raises(InputError) as exc:
        load(path, *overrides)
    message = str(exc.value)
    assert "\n" not in message
    return message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.yaml"
    path.write_text(text)
    return path


def test_default_topology_is_three_azs_one_node_each_two_services_of_two():
    topo = load()
    assert [n.name for n in topo.k8s_nodes] == ["node-a1", "node-b1", "node-c1"]
    assert [e.name for e in topo.elb_nodes] == ["elb-a1", "elb-b1", "elb-c1"]
    assert [(p.name, p.node) for p in topo.pods] == [
        ("accounts-0", "node-a1"),
        ("accounts-1", "node-b1"),
        ("catalog-0", "node-c1"),
        ("catalog-1", "node-a1"),
    ]
    assert topo.elb.cross_zone is False
    assert topo.kube_proxy.flavour == "modern" and topo.kube_proxy.random_fully


def test_aws_provider_health_check_defaults_target_the_first_listeners_nodeport():
    topo = load()
    hc = topo.elb.health_check
    assert (hc.interval, hc.timeout, hc.unhealthy_threshold, hc.healthy_threshold) == (10, 5, 6, 2)
    assert topo.health_check_port == topo.service(topo.elb.listeners[0].service).node_port == 30090
    assert load(DEFAULT, "elb.health_check.target=TCP:30091").health_check_port == 30091


def test_seed_topology_is_legacy_with_three_instances_settable_to_nine():
    topo = load(SEED)
    assert topo.kube_proxy.flavour == "legacy" and not topo.kube_proxy.random_fully
    assert len(topo.k8s_nodes) == 3 and len(topo.elb.listeners) == 3
    nine = load(SEED, "nodes_per_az=3", "elb.cross_zone=true")
    assert len(nine.k8s_nodes) == 9
    assert all(len(nine.elb_targets(e)) == 9 for e in nine.elb_nodes)
    assert all(len(topo.elb_targets(e)) == 1 for e in topo.elb_nodes)


def test_spread_placement_prefers_other_azs_then_empty_nodes():
    topo = load(SEED, "nodes_per_az=3")
    nodes = {p.name: p.node for p in topo.pods}
    assert nodes["accounts-0"][-2] != nodes["accounts-1"][-2]  # replicas land in different AZs
    assert len(set(nodes.values())) == len(nodes)  # 6 pods on 9 nodes: one per node


def test_durations_accept_units():
    topo = load(DEFAULT, "elb.idle_timeout=2m", "elb.health_check.interval=5500ms", "elb.health_check.timeout=2.5")
    assert topo.elb.idle_timeout == 120 and topo.elb.health_check.interval == 5.5
    assert topo.elb.health_check.timeout == 2.5
    assert topo.conntrack_max == 131072


def test_unknown_field_names_the_field_file_and_line(tmp_path):
    path = write(tmp_path, DEFAULT.read_text().replace("  cross_zone: false", "  cross_zone: false\n  crosszone: true"))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "crosszone" in ln)
    assert error_of(path) == f"{path}:{line}: unknown field 'elb.crosszone'; check the spelling"


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "azs:\n  - name: a\n   bad: [\n")
    message = error_of(path)
    assert message.startswith(f"{path}:") and "invalid YAML" in message


def test_nodeport_outside_the_range_points_at_the_line(tmp_path):
    path = write(tmp_path, DEFAULT.read_text().replace("node_port: 30090", "node_port: 8080"))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "node_port: 8080" in ln)
    assert error_of(path) == f"{path}:{line}: services[0].node_port: must be from 30000 to 32767, got 8080"
    # set on the command line: the option names it
    assert error_of(DEFAULT, "services.accounts.node_port=8080") == (
        "--set services.accounts.node_port=8080: must be from 30000 to 32767, got 8080"
    )


def test_overlapping_cidrs_are_rejected():
    message = error_of(DEFAULT, "vpcs.client.cidr=172.20.128.0/17")
    assert "vpcs.client.cidr" in message and "overlaps" in message and "172.20.0.0/16" in message


def test_listener_for_an_unknown_service():
    assert "unknown service 'billing'" in error_of(DEFAULT, "elb.listeners.1.service=billing")


def test_duplicate_nodeports():
    assert "duplicate NodePort 30090" in error_of(DEFAULT, "services.catalog.node_port=30090")


def test_health_check_timeout_must_be_below_interval():
    assert "shorter than the interval" in error_of(DEFAULT, "elb.health_check.timeout=10s")


def test_placement_on_unknown_node():
    assert "unknown node 'node-z9'" in error_of(DEFAULT, "services.accounts.placement=[node-a1, node-z9]")


def test_missing_file():
    assert error_of(Path("/nonexistent/topo.yaml")) == "/nonexistent/topo.yaml: no such file"


def test_set_rejects_malformed_items():
    assert "expected KEY=VALUE" in error_of(DEFAULT, "elb.cross_zone")
    assert "no list item named 'nope'" in error_of(DEFAULT, "services.nope.replicas=1")


def test_json_schema_is_published_and_strict():
    from lab.models.schemas import SCHEMAS

    schema = SCHEMAS["topology"]()
    assert schema["additionalProperties"] is False
    assert {"azs", "elb", "services", "kube_proxy"} <= set(schema["properties"])
