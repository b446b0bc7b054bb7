"""The kind backend without Docker: golden kind config, manifests and dry-run plan; schema checks; bad input.

Manifests are validated with kubernetes-validate against the OpenAPI schemas of the Kubernetes version
the node image runs (the package ships them: this works offline). The kind Cluster config has no
OpenAPI schema; it is checked against the fields of kind's v1alpha4 API types, written out below.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from lab.backends import kind as backend
from lab.cli import app
from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render import kind
from lab.render.plan import build_plan
from lab.state import LabState
from tests.conftest import TOPOLOGIES, assert_golden, single_error, unique_lab_name

IMAGE = "k8s-elb-lab/labservices:test"
VARIANTS = {"default": "default.yaml", "seed-2017": "seed-2017.yaml"}
runner = CliRunner()


def load(file: str, overrides: list[str] | None = None) -> Topology:
    return load_model(Topology, TOPOLOGIES / file, overrides or [])


def parse_all(text: str) -> list:
    return list(YAML(typ="safe").load_all(text))


# --- golden files ---


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kind_config_golden(variant):
    topo = load(VARIANTS[variant])
    assert_golden(f"kind/{variant}-kind.yaml", kind.to_yaml(kind.kind_config(topo, variant)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_golden(variant):
    topo = load(VARIANTS[variant])
    assert_golden(f"kind/{variant}-manifests.yaml", kind.to_yaml(kind.manifests(topo, build_plan(topo), IMAGE)))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dry_run_plan_golden(variant):
    topo = load(VARIANTS[variant])
    text = kind.plan_text(
        topo, build_plan(topo), variant, Path(f"/run/lab/{variant}"), IMAGE, Path("services"), source=VARIANTS[variant]
    )
    assert_golden(f"kind/{variant}-plan.txt", text)


# --- schemas ---


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_validate_against_the_openapi_schemas_of_the_target_version(variant):
    topo = load(VARIANTS[variant])
    version = kind.node_image(topo).kubernetes
    text = kind.to_yaml(kind.manifests(topo, build_plan(topo), IMAGE))
    docs = parse_all(text)  # validate what is written, not the dicts
    assert [d["kind"] for d in docs].count("Deployment") == len(topo.pods)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would():
    topo = load("default.yaml")
    version = kind.node_image(topo).kubernetes
    docs = kind.manifests(topo, build_plan(topo), IMAGE)
    service = copy.deepcopy(next(d for d in docs if d["kind"] == "Service"))
    service["spec"]["ports"][0]["nodePort"] = "30090"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, version, strict=True)
    deploy = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deploy["spec"]["template"]["spec"]["nodeSelecter"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, version, strict=True)


def test_the_validator_ships_its_schemas_for_both_node_images():
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    for image in kind.NODE_IMAGES.values():
        major_minor = ".".join(image.kubernetes.split(".")[:2])
        assert (root / f"v{major_minor}.0-local-strict").is_dir(), f"no offline schemas for {image.kubernetes}"


# The fields of kind's v1alpha4 Cluster (sigs.k8s.io/kind/pkg/apis/config/v1alpha4/types.go), strict.
KIND_NODE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["role"],
    "properties": {
        "role": {"enum": ["control-plane", "worker"]},
        "image": {"type": "string", "pattern": r"^kindest/node:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "extraMounts": {"type": "array"},
        "extraPortMappings": {"type": "array"},
        "gpus": {"type": "string"},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array"},
    },
}
KIND_CLUSTER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion", "nodes"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9-]*$"},
        "nodes": {"type": "array", "items": KIND_NODE, "minItems": 1},
        "networking": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ipFamily": {"enum": ["ipv4", "ipv6", "dual"]},
                "apiServerPort": {"type": "integer"},
                "apiServerAddress": {"type": "string"},
                "podSubnet": {"type": "string"},
                "serviceSubnet": {"type": "string"},
                "disableDefaultCNI": {"type": "boolean"},
                "kubeProxyMode": {"enum": ["iptables", "ipvs", "nftables", "none"]},
                "dnsSearch": {"type": "array"},
            },
        },
        "featureGates": {"type": "object"},
        "runtimeConfig": {"type": "object"},
        "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
        "kubeadmConfigPatchesJSON6902": {"type": "array"},
        "containerdConfigPatches": {"type": "array"},
        "containerdConfigPatchesJSON6902": {"type": "array"},
    },
}
KUBE_PROXY_CONNTRACK = {"maxPerCore", "min", "tcpEstablishedTimeout", "tcpCloseWaitTimeout", "tcpBeLiberal"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kind_config_uses_only_kinds_v1alpha4_fields(variant):
    topo = load(VARIANTS[variant])
    config = YAML(typ="safe").load(kind.to_yaml(kind.kind_config(topo, variant)))
    jsonschema.validate(config, KIND_CLUSTER)
    patch = YAML(typ="safe").load(config["kubeadmConfigPatches"][0])
    assert patch["kind"] == "KubeProxyConfiguration"
    assert patch["apiVersion"] == "kubeproxy.config.k8s.io/v1alpha1"
    assert set(patch["conntrack"]) <= KUBE_PROXY_CONNTRACK
    assert "maxPerCore" not in patch["conntrack"]  # kind's own 0 must stay: nf_conntrack_max is machine-wide


def test_the_kind_config_check_can_fail():
    config = kind.kind_config(load("default.yaml"), "x")
    config["networking"]["kubeProxyMod"] = "iptables"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, KIND_CLUSTER)


# --- what the rendering means ---


def test_one_labelled_worker_per_node_with_its_zone_and_iptables_kube_proxy():
    topo = load("seed-2017.yaml", ["nodes_per_az=3"])
    config = kind.kind_config(topo, "seed")
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert [(w["labels"][kind.NODE_LABEL], w["labels"][kind.ZONE_LABEL]) for w in workers] == [
        (n.name, n.az) for n in topo.k8s_nodes
    ]
    assert [n["role"] for n in config["nodes"]].count("control-plane") == 1
    net = config["networking"]
    assert net["kubeProxyMode"] == "iptables"
    assert (net["podSubnet"], net["serviceSubnet"]) == ("100.96.0.0/11", "100.64.0.0/13")


def test_legacy_is_the_oldest_node_image_and_modern_a_current_one():
    legacy = kind.kind_config(load("seed-2017.yaml"), "s")["nodes"][0]["image"]
    modern = kind.kind_config(load("default.yaml"), "d")["nodes"][0]["image"]
    assert legacy.startswith("kindest/node:v1.31.14@sha256:")
    assert modern.startswith("kindest/node:v1.35.0@sha256:")


def test_pods_are_pinned_where_the_topology_places_them_and_services_keep_nodeport_and_policy():
    topo = load("default.yaml", ["services.catalog.external_traffic_policy=Local"])
    docs = kind.manifests(topo, build_plan(topo), IMAGE)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {p.name for p in topo.pods}
    for pod in topo.pods:
        spec = deployments[pod.name]["spec"]
        assert spec["replicas"] == 1
        assert spec["template"]["spec"]["nodeSelector"] == {kind.NODE_LABEL: pod.node}
        env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
        assert (env["POD_NAME"], env["NODE_NAME"], env["SERVICE_NAME"]) == (pod.name, pod.node, pod.service)
    services = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    assert services["accounts"]["ports"][0]["nodePort"] == 30090
    assert services["accounts"]["externalTrafficPolicy"] == "Cluster"
    assert services["catalog"]["externalTrafficPolicy"] == "Local"
    assert all(s["type"] == "NodePort" for s in services.values())


def test_docker_picks_addresses_only_outside_every_az_subnet_and_the_elb_addresses():
    topo = load("seed-2017.yaml", ["nodes_per_az=3"])
    plan = build_plan(topo)
    net = kind.docker_network(topo)
    assert net.subnet == topo.vpcs.cluster.cidr
    assert not any(net.ip_range.overlaps(s) for s in topo.az_subnets.values())
    for host in plan.by_role("elb") + plan.by_role("node"):
        assert host.ip in net.subnet and host.ip not in net.ip_range
    for ip in kind.client_ips(topo).values():
        assert ip in net.ip_range


def test_unprivileged_ports_below_1024_get_the_safe_sysctl():
    topo = load("default.yaml", ["services.accounts.port=80"])
    docs = kind.manifests(topo, build_plan(topo), IMAGE)
    accounts = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "accounts-0")
    assert accounts["spec"]["template"]["spec"]["securityContext"]["sysctls"][0]["value"] == "0"
    kubernetes_validate.validate(json.loads(json.dumps(accounts)), kind.node_image(topo).kubernetes, strict=True)


# --- the CLI: dry run, bad input, pre-flight ---


def test_dry_run_needs_no_docker_and_prints_the_whole_plan(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, kind or kubectl at all
    name = unique_lab_name("k")
    result = runner.invoke(
        app, ["up", "--backend", "kind", "--dry-run", "-n", name, "-t", str(TOPOLOGIES / "default.yaml")]
    )
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in (
        "apiVersion: kind.x-k8s.io/v1alpha4",
        "kind: Deployment",
        "nodePort: 30091",
        "## haproxy.cfg of elb-c1",
        'server node-c1 172.20.192.16:30090 agent-send "node-c1\\n"',
        "## checks.json of elb-c1 (its health checker)",
        f"KIND_EXPERIMENTAL_DOCKER_NETWORK=lab-{name} kind create cluster --name lab-{name}",
        "kind load docker-image k8s-elb-lab/labservices:",
        f"docker run --detach --name lab-{name}-elb-a1",
        f"docker run --detach --name lab-{name}-elb-a1-check --network container:lab-{name}-elb-a1",
    ):
        assert expected in out, expected
    assert not LabState(name).exists()


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("cluster.node_pod_prefix=26", "cluster.node_pod_prefix 26: kind's controller-manager gives every node a /24"),
        ("kube_proxy.masquerade_random_fully=false", "kube_proxy.masquerade_random_fully false: the kube-proxy of"),
        ("nodes_per_az=7", "21 nodes: the kind backend runs at most 20 worker containers"),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_topology_kind_cannot_express_is_one_line_before_anything_is_created(override, says, dry_run):
    name = unique_lab_name("k")
    args = ["up", "--backend", "kind", "-n", name, "-t", str(TOPOLOGIES / "default.yaml"), "--set", override]
    line = single_error(runner.invoke(app, args + (["--dry-run"] if dry_run else [])))
    assert line.startswith(f"Error: {TOPOLOGIES / 'default.yaml'}: {says}")
    assert "--backend netns" in line or "lower" in line
    assert not LabState(name).exists()


def fake_tools(directory: Path, docker_stderr: str | None = None) -> None:
    for tool in ("kind", "kubectl"):
        path = directory / tool
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    if docker_stderr is not None:
        path = directory / "docker"
        path.write_text(f"#!/bin/sh\necho '{docker_stderr}' >&2\nexit 1\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_preflight_names_every_missing_tool_and_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    name = unique_lab_name("k")
    line = single_error(runner.invoke(app, ["up", "--backend", "kind", "-n", name]))
    assert line.startswith("Error: the kind backend needs docker, kind, kubectl: install Docker Engine")
    assert "sigs.k8s.io/kind@v0.31.0" in line and "kubernetes-client" in line
    assert not LabState(name).exists()


def test_preflight_says_when_the_docker_engine_does_not_answer(monkeypatch, tmp_path):
    stderr = "Cannot connect to the Docker daemon at unix:///nowhere.sock. Is the docker daemon running?"
    fake_tools(tmp_path, docker_stderr=stderr)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(backend.os, "geteuid", lambda: 0)
    name = unique_lab_name("k")
    line = single_error(runner.invoke(app, ["up", "--backend", "kind", "-n", name]))
    expected = (
        f"the Docker engine is not reachable ({stderr}); start it (e.g. systemctl start docker) or set DOCKER_HOST"
    )
    assert line == "Error: " + expected
    assert not LabState(name).exists()


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client installed")
def test_preflight_with_the_real_docker_client_and_no_engine(monkeypatch, tmp_path):
    fake_tools(tmp_path)  # kind and kubectl only: the real docker client talks to a socket nobody serves
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setattr(backend.os, "geteuid", lambda: 0)
    line = single_error(runner.invoke(app, ["up", "--backend", "kind", "-n", unique_lab_name("k")]))
    assert line.startswith("Error: the Docker engine is not reachable (")
    assert "no-engine.sock" in line


def test_service_image_tag_is_a_digest_of_the_services_directory():
    tag = backend.service_image()
    assert tag.startswith(kind.SERVICE_IMAGE_REPO + ":") and len(tag.rsplit(":", 1)[1]) == 12
    assert tag == backend.service_image()


def test_the_service_image_pins_the_thrift_stack_the_lab_runs():
    """services/Dockerfile installs exact versions; they must be the ones the lab itself is tested with."""
    from importlib.metadata import version

    dockerfile = (Path(backend.SERVICES_DIR) / "Dockerfile").read_text()
    install = next(ln for ln in dockerfile.splitlines() if ln.startswith("RUN pip install"))
    pins = dict(word.split("==") for word in install.split() if "==" in word)
    assert pins, install
    for package, pinned in pins.items():
        assert version(package) == pinned, f"{package}: image {pinned}, lab {version(package)}"
    assert "COPY labservices/ /app/labservices/" in dockerfile
    assert (Path(backend.SERVICES_DIR) / "labservices" / "server.py").exists()
    assert '"labservices.server"' in dockerfile


def test_the_checker_runs_beside_haproxy_in_the_elb_containers_namespace():
    cmd = kind.checker_command("x1", Path("/run/lab/x1"), "elb-a1", IMAGE, Path("/src/lab/runtime/elbcheck.py"))
    argv = list(cmd.argv)
    assert argv[argv.index("--network") + 1] == "container:lab-x1-elb-a1"  # its agent port is HAProxy's loopback
    assert "/run/lab/x1/elb/elb-a1:/usr/local/etc/haproxy:ro" in argv  # checks.json next to haproxy.cfg
    assert "/src/lab/runtime/elbcheck.py:/lab/elbcheck.py:ro" in argv
    assert argv[argv.index("--label") + 1] == "k8s-elb-lab.lab=x1"  # removed by `lab down` with the others
    script = argv[-1]
    assert script.startswith("until [ -e /usr/local/etc/haproxy/start ]")  # not before the accounting is in
    assert script.endswith("--socket /run/haproxy/checks.sock")
