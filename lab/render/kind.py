"""The kind backend's plan for a topology: kind cluster config, Kubernetes manifests, Docker addressing. Pure.

How the topology maps onto kind (details and limits in docs/kind.md):
- one Docker network per lab whose subnet is the cluster VPC; Docker hands the kind node containers their
  primary addresses from a free block of it, and every other address is the one the netns backend uses:
  ELB containers are started on their plan address, each worker gets its plan address as a second /32;
- one kind worker per topology node, labelled with its zone (topology.kubernetes.io/zone) and lab node name;
  kube-proxy in iptables mode; pod and service subnets from the topology;
- one single-replica Deployment per topology pod, pinned to its node by that label, so pods keep the lab's
  names and placement; one NodePort Service per service with the topology's NodePort and policy;
- the flavour picks the node image: legacy is the oldest image of the pinned kind release, modern a current one.
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from lab.models.topology import Topology
from lab.render.haproxy import HaproxyPaths, render_haproxy
from lab.render.healthcheck import render_checker
from lab.render.plan import NetworkPlan

KIND_VERSION = "v0.31.0"


@dataclass(frozen=True)
class NodeImage:
    kubernetes: str
    image: str


# From the kind v0.31.0 release notes (the images built for that release, pinned by digest).
NODE_IMAGES = {
    "legacy": NodeImage(
        "1.31.14", "kindest/node:v1.31.14@sha256:6f86cf509dbb42767b6e79debc3f2c32e4ee01386f0489b3b2be24b0a55aac2b"
    ),
    "modern": NodeImage(
        "1.35.0", "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
    ),
}
# The official image's 2.6 branch, as Debian 12's haproxy that the netns backend runs (Prometheus exporter built in).
HAPROXY_IMAGE = "haproxy:2.6"
SERVICE_IMAGE_REPO = "k8s-elb-lab/labservices"

LABEL_LAB = "k8s-elb-lab.lab"  # Docker label on every network and container the backend creates
LABEL_HOST = "k8s-elb-lab.host"
LABEL_AZ = "k8s-elb-lab.az"
NODE_LABEL = "k8s-elb-lab/node"  # Kubernetes node label: the topology node a kind worker stands for
POD_LABEL = "k8s-elb-lab/pod"
SERVICE_LABEL = "k8s-elb-lab/service"
ZONE_LABEL = "topology.kubernetes.io/zone"

HAPROXY_DIR = "/usr/local/etc/haproxy"  # the config, mounted read-only into each ELB container
HAPROXY_RUN = "/run/haproxy"  # stats socket and pid file, mounted from the lab's state directory
MAX_WORKERS = 20  # kind node containers each run a kubelet and containerd: more does not fit one machine
MAX_PODS_PER_NODE = 100  # the kubelet's default limit is 110, a few go to kindnet and kube-proxy
READY_TIMEOUT_S = 300
CHECKER_FILE = "checks.json"  # the health checker's config, next to haproxy.cfg (the checker reloads it)
CHECKER_SOCKET = "checks.sock"  # in the ELB node's run directory, next to HAProxy's stats socket
CHECKER_SCRIPT = "/lab/elbcheck.py"  # lab/runtime/elbcheck.py, mounted read-only into the checker container
ELB_START_FILE = "start"  # created in the ELB node's config directory once its namespace is instrumented
# PID 1 of an ELB container: wait for the start file, then run HAProxy and restart it whenever it exits, so
# a configuration change restarts HAProxy inside the same network namespace (its accounting rules stay).
ELB_LOOP = (
    f"until [ -e {HAPROXY_DIR}/{ELB_START_FILE} ]; do sleep 0.1; done; "
    f"while :; do haproxy -db -f {HAPROXY_DIR}/haproxy.cfg; sleep 0.2; done"
)


@dataclass(frozen=True)
class KindNames:
    """Every Docker and kind name of one lab; all start with lab-<lab> so they never clash with others'."""

    lab: str

    @property
    def cluster(self) -> str:
        return f"lab-{self.lab}"

    @property
    def network(self) -> str:
        return f"lab-{self.lab}"

    @property
    def context(self) -> str:
        return f"kind-{self.cluster}"

    def container(self, host: str) -> str:
        return f"lab-{self.lab}-{host}"


@dataclass(frozen=True)
class DockerNetwork:
    subnet: IPv4Network  # the cluster VPC
    gateway: IPv4Address
    ip_range: IPv4Network  # where Docker may pick addresses itself (the kind nodes' primary addresses)


def unsupported(topo: Topology) -> str | None:
    """The first thing in the topology the kind backend cannot build, as one line with a fix; None if all fits."""
    if topo.cluster.node_pod_prefix != 24:
        return (
            f"cluster.node_pod_prefix {topo.cluster.node_pod_prefix}: kind's controller-manager gives every node "
            "a /24 pod CIDR; use 24 with --backend kind, or --backend netns"
        )
    if topo.kube_proxy.masquerade_random_fully is False:
        return (
            "kube_proxy.masquerade_random_fully false: the kube-proxy of every kind node image masquerades with "
            "--random-fully; remove the setting with --backend kind, or use --backend netns"
        )
    if len(topo.k8s_nodes) > MAX_WORKERS:
        return (
            f"{len(topo.k8s_nodes)} nodes: the kind backend runs at most {MAX_WORKERS} worker containers on one "
            "machine; lower nodes_per_az / azs[].nodes, or use --backend netns"
        )
    for node in topo.k8s_nodes:
        count = sum(1 for p in topo.pods if p.node == node.name)
        if count > MAX_PODS_PER_NODE:
            return (
                f"node {node.name} would run {count} pods; a kind node runs at most {MAX_PODS_PER_NODE} "
                "(the kubelet's max-pods); lower services[].replicas or add nodes"
            )
    try:
        docker_network(topo)
    except ValueError as exc:
        return str(exc)
    return None


def docker_network(topo: Topology) -> DockerNetwork:
    """The lab's Docker network: the cluster VPC, with Docker's own picks confined to a block no AZ subnet uses."""
    vpc = topo.vpcs.cluster.cidr
    used = list(topo.az_subnets.values())
    need = len(topo.k8s_nodes) + 1 + 8  # workers, the control plane, room for a restart or two
    for prefix in range(vpc.prefixlen + 1, 29):  # the largest free block first
        if 2 ** (32 - prefix) - 2 < need:
            break
        for block in vpc.subnets(new_prefix=prefix):
            if not any(block.overlaps(u) for u in used):
                return DockerNetwork(subnet=vpc, gateway=vpc.network_address + 1, ip_range=block)
    raise ValueError(
        f"vpcs.cluster.cidr {vpc}: no block is left outside the AZ subnets for Docker to address the kind "
        "node containers; enlarge the VPC or shrink azs[].subnet"
    )


def client_ips(topo: Topology) -> dict[str, IPv4Address]:
    """The client tier's containers: fixed addresses at the top of Docker's own block (it allocates from the bottom)."""
    top = docker_network(topo).ip_range.broadcast_address
    return {f"{topo.client.name}-{i + 1}": top - 1 - i for i in range(topo.client.instances)}


def node_image(topo: Topology) -> NodeImage:
    return NODE_IMAGES[topo.kube_proxy.flavour]


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


def kind_config(topo: Topology, lab: str) -> dict[str, Any]:
    """The kind Cluster (kind.x-k8s.io/v1alpha4): one control plane, one worker per topology node."""
    image = node_image(topo).image
    ct = topo.kube_proxy.conntrack
    # kind's own kube-proxy config keeps conntrack maxPerCore 0 (nf_conntrack_max is global to the machine):
    # only the per-namespace timeouts are the topology's.
    proxy_patch = LiteralScalarString(
        _yaml_text(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "conntrack": {
                    "tcpEstablishedTimeout": _duration(ct.tcp_timeout_established),
                    "tcpCloseWaitTimeout": _duration(ct.tcp_timeout_close_wait),
                },
            }
        )
    )
    nodes: list[dict[str, Any]] = [{"role": "control-plane", "image": image}]
    for node in topo.k8s_nodes:
        nodes.append({"role": "worker", "image": image, "labels": {ZONE_LABEL: node.az, NODE_LABEL: node.name}})
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": KindNames(lab).cluster,
        "networking": {
            "ipFamily": "ipv4",
            "kubeProxyMode": "iptables",
            "podSubnet": str(topo.cluster.pod_cidr),
            "serviceSubnet": str(topo.cluster.service_cidr),
        },
        "kubeadmConfigPatches": [proxy_patch],
        "nodes": nodes,
    }


def _labels(**extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "k8s-elb-lab", **extra}


def manifests(topo: Topology, plan: NetworkPlan, image: str) -> list[dict[str, Any]]:
    """Namespaces, one Deployment per topology pod (pinned to its node), one NodePort Service per service."""
    docs: list[dict[str, Any]] = []
    for ns in sorted({s.namespace for s in topo.services} - {"default"}):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": _labels()}})
    for svc in topo.services:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": svc.name,
                    "namespace": svc.namespace,
                    "labels": _labels(**{SERVICE_LABEL: svc.name}),
                },
                "spec": {
                    "type": "NodePort",
                    "clusterIP": str(plan.cluster_ips[svc.name]),
                    "externalTrafficPolicy": svc.external_traffic_policy,
                    "selector": {SERVICE_LABEL: svc.name},
                    "ports": [
                        {
                            "name": "thrift",
                            "protocol": "TCP",
                            "port": svc.service_port,
                            "targetPort": svc.port,
                            "nodePort": svc.node_port,
                        }
                    ],
                },
            }
        )
    for pod in topo.pods:
        docs.append(deployment(topo, pod.name, image))
    return docs


def pod_args(port: int, backlog: int, accept_delay: float = 0.0) -> list[str]:
    """The server's flags (the image's entrypoint runs the Thrift server; later flags win)."""
    args = ["--port", str(port), "--backlog", str(backlog)]
    if accept_delay:
        args += ["--accept-delay", f"{accept_delay:g}"]
    return args


def deployment(topo: Topology, pod_name: str, image: str, backlog: int | None = None, accept_delay: float = 0.0):
    pod = next(p for p in topo.pods if p.name == pod_name)
    svc = topo.service(pod.service)
    node = topo.node(pod.node)
    labels = _labels(**{SERVICE_LABEL: svc.name, POD_LABEL: pod.name})
    container: dict[str, Any] = {
        "name": "thrift",
        "image": image,
        "imagePullPolicy": "Never",  # loaded into the nodes with `kind load docker-image`
        "args": pod_args(svc.port, backlog or svc.backlog, accept_delay),
        "ports": [{"name": "thrift", "containerPort": svc.port, "protocol": "TCP"}],
        "env": [
            {"name": "SERVICE_NAME", "value": svc.name},
            {"name": "POD_NAME", "value": pod.name},  # the lab's pod name, not the generated one
            {"name": "NODE_NAME", "value": node.name},
            {"name": "NODE_ZONE", "value": node.az},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "readinessProbe": {"tcpSocket": {"port": "thrift"}, "periodSeconds": 2, "failureThreshold": 2},
    }
    spec: dict[str, Any] = {
        "nodeSelector": {NODE_LABEL: node.name},
        "terminationGracePeriodSeconds": 5,
        "containers": [container],
    }
    if svc.port < 1024:  # the image runs as nobody; this sysctl is on Kubernetes' safe list
        spec["securityContext"] = {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": pod.name, "namespace": svc.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {POD_LABEL: pod.name}},
            "strategy": {"type": "Recreate"},  # one pod per Deployment: a restart never runs two
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def haproxy_paths(state_dir: Path, elb: str) -> tuple[HaproxyPaths, HaproxyPaths]:
    """(inside the ELB container, on this machine): the same files through the bind mount."""
    inside = HaproxyPaths(stats_socket=Path(HAPROXY_RUN, "haproxy.sock"), pid_file=Path(HAPROXY_RUN, "haproxy.pid"))
    run = state_dir / "run" / elb
    outside = HaproxyPaths(stats_socket=run / "haproxy.sock", pid_file=run / "haproxy.pid")
    return inside, outside


# --- commands: what the backend runs, in order (the dry-run prints exactly these) ---


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    why: str
    env: tuple[tuple[str, str], ...] = ()

    def text(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return (env + " " if env else "") + shlex.join(self.argv)


def network_command(topo: Topology, lab: str) -> Command:
    net = docker_network(topo)
    names = KindNames(lab)
    return Command(
        (
            "docker", "network", "create", "--driver", "bridge",
            "--subnet", str(net.subnet), "--gateway", str(net.gateway), "--ip-range", str(net.ip_range),
            "--label", f"{LABEL_LAB}={lab}", names.network,
        ),
        "the cluster VPC: one Docker network for the kind nodes, ELB nodes and clients",
    )  # fmt: skip


def image_build_command(image: str, services_dir: Path) -> Command:
    return Command(
        ("docker", "build", "--label", f"{LABEL_LAB}=image", "-t", image, str(services_dir)),
        "the Thrift service image from services/Dockerfile",
    )


def cluster_commands(topo: Topology, lab: str, state_dir: Path, image: str) -> list[Command]:
    names = KindNames(lab)
    kubeconfig = str(state_dir / "kubeconfig")
    return [
        Command(
            (
                "kind", "create", "cluster", "--name", names.cluster, "--config", str(state_dir / "kind.yaml"),
                "--kubeconfig", kubeconfig, "--wait", f"{READY_TIMEOUT_S}s",
            ),
            f"kind {KIND_VERSION} cluster, node image {node_image(topo).image}",
            env=(("KIND_EXPERIMENTAL_DOCKER_NETWORK", names.network),),
        ),
        Command(
            ("kind", "load", "docker-image", image, "--name", names.cluster),
            "the service image into every node (nothing is pulled by the pods)",
        ),
        Command(
            ("kubectl", "--kubeconfig", kubeconfig, "apply", "-f", str(state_dir / "manifests.yaml")),
            "Deployments and NodePort Services",
        ),
    ]  # fmt: skip


def rollout_command(lab: str, state_dir: Path, namespace: str) -> Command:
    return Command(
        (
            "kubectl", "--kubeconfig", str(state_dir / "kubeconfig"), "-n", namespace, "wait",
            "--for=condition=Available", "deployment", "-l", "app.kubernetes.io/part-of=k8s-elb-lab",
            f"--timeout={READY_TIMEOUT_S}s",
        ),
        "wait until every pod is ready",
    )  # fmt: skip


def elb_command(topo: Topology, plan: NetworkPlan, lab: str, state_dir: Path, elb: str) -> Command:
    names = KindNames(lab)
    az = next(e.az for e in topo.elb_nodes if e.name == elb)
    return Command(
        (
            "docker", "run", "--detach", "--name", names.container(elb), "--hostname", elb,
            "--network", names.network, "--ip", str(plan.ip(elb)),
            "--label", f"{LABEL_LAB}={lab}", "--label", f"{LABEL_HOST}={elb}", "--label", f"{LABEL_AZ}={az}",
            "--user", "0", "--restart", "unless-stopped",
            "--volume", f"{state_dir / 'elb' / elb}:{HAPROXY_DIR}:ro",
            "--volume", f"{state_dir / 'run' / elb}:{HAPROXY_RUN}",
            HAPROXY_IMAGE, "sh", "-c", ELB_LOOP,
        ),
        f"ELB node {elb} ({az}): HAProxy on its plan address, started once the lab's accounting is in place",
    )  # fmt: skip


def checker_command(lab: str, state_dir: Path, elb: str, image: str, script: Path) -> Command:
    """The ELB node's health checker: the service image's Python in the ELB container's network namespace, started
    with HAProxy (once the accounting is in place, so its failed checks are counted from zero)."""
    names = KindNames(lab)
    loop = (
        f"until [ -e {HAPROXY_DIR}/{ELB_START_FILE} ]; do sleep 0.1; done; "
        f"exec python -S {CHECKER_SCRIPT} {HAPROXY_DIR}/{CHECKER_FILE} --socket {HAPROXY_RUN}/{CHECKER_SOCKET}"
    )
    return Command(
        (
            "docker", "run", "--detach", "--name", names.container(f"{elb}-check"),
            "--network", f"container:{names.container(elb)}",
            "--label", f"{LABEL_LAB}={lab}", "--label", f"{LABEL_HOST}={elb}-check",
            "--user", "0", "--restart", "unless-stopped",
            "--volume", f"{state_dir / 'elb' / elb}:{HAPROXY_DIR}:ro",
            "--volume", f"{state_dir / 'run' / elb}:{HAPROXY_RUN}",
            "--volume", f"{script}:{CHECKER_SCRIPT}:ro",
            "--entrypoint", "sh", image, "-c", loop,
        ),
        f"ELB node {elb}: its health checker (a TCP check of each instance every interval; HAProxy asks it)",
    )  # fmt: skip


def client_command(topo: Topology, lab: str, client: str, ip: IPv4Address, image: str) -> Command:
    names = KindNames(lab)
    return Command(
        (
            "docker", "run", "--detach", "--name", names.container(client), "--hostname", client,
            "--network", names.network, "--ip", str(ip),
            "--label", f"{LABEL_LAB}={lab}", "--label", f"{LABEL_HOST}={client}",
            "--entrypoint", "python", image, "-c", "import signal; signal.pause()",
        ),
        f"client {client}: a network namespace for the lab's load generator and `lab call`",
    )  # fmt: skip


def destroy_text(lab: str) -> list[str]:
    """What `lab down` runs (the backend also removes whatever the journal and the labels name)."""
    names = KindNames(lab)
    return [
        f"kind delete cluster --name {names.cluster}",
        f"docker rm --force $(docker ps --all --quiet --filter label={LABEL_LAB}={lab})",
        f"docker network rm {names.network}",
    ]


# --- text ---


def _yaml() -> YAML:
    y = YAML()  # round-trip dumper: keeps the order we wrote (kind/apiVersion first) and block scalars
    y.default_flow_style = False
    y.width = 4096
    y.representer.ignore_aliases = lambda _data: True  # shared label dicts are written out, not anchored
    return y


def _yaml_text(doc: Any) -> str:
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def to_yaml(docs: list[dict[str, Any]] | dict[str, Any]) -> str:
    """One YAML document, or a stream of them separated by ---."""
    if isinstance(docs, dict):
        return _yaml_text(docs)
    return "---\n".join(_yaml_text(d) for d in docs)


def plan_text(
    topo: Topology,
    plan: NetworkPlan,
    lab: str,
    state_dir: Path,
    image: str,
    services_dir: Path,
    time_scale: float = 1.0,
    source: str = "",
    checker_script: Path = Path("lab/runtime/elbcheck.py"),
) -> str:
    """Everything `lab up --backend kind` would create, in order: the --dry-run output."""
    names = KindNames(lab)
    img = node_image(topo)
    net = docker_network(topo)
    out = [
        f"# lab '{lab}' (backend kind) from {source or 'topology'}",
        f"# kind {KIND_VERSION}, Kubernetes {img.kubernetes} (kube-proxy flavour {topo.kube_proxy.flavour}; "
        f"topology asks for {topo.cluster.kubernetes_version})",
        "",
        "## docker network (the cluster VPC)",
        f"network {names.network} subnet={net.subnet} gateway={net.gateway} docker-picks-from={net.ip_range}",
        "",
        "## addresses",
    ]
    for elb in topo.elb_nodes:
        out.append(f"elb {elb.name} az={elb.az} container={names.container(elb.name)} ip={plan.ip(elb.name)}")
    for node in topo.k8s_nodes:
        out.append(
            f"node {node.name} az={node.az} kind-worker labelled {NODE_LABEL}={node.name} "
            f"ip={plan.ip(node.name)}/32 (second address; primary from {net.ip_range})"
        )
    for client, ip in client_ips(topo).items():
        out.append(f"client {client} container={names.container(client)} ip={ip}")
    out.append("pods: addresses from each node's /24 of the pod subnet, given by kind's CNI (kindnet)")
    out += ["", "## kind cluster config (kind.yaml)", to_yaml(kind_config(topo, lab))]
    out += ["## Kubernetes manifests (manifests.yaml)", to_yaml(manifests(topo, plan, image))]
    for elb in topo.elb_nodes:
        inside, _ = haproxy_paths(state_dir, elb.name)
        out += [f"## haproxy.cfg of {elb.name}", render_haproxy(topo, plan, elb, inside, time_scale)]
        out += [f"## {CHECKER_FILE} of {elb.name} (its health checker)", render_checker(topo, plan, elb, time_scale)]
    out.append("## commands, in order")
    steps = [network_command(topo, lab), image_build_command(image, services_dir)]
    steps += cluster_commands(topo, lab, state_dir, image)
    for namespace in sorted({s.namespace for s in topo.services}):
        steps.append(rollout_command(lab, state_dir, namespace))
    for c in steps:
        out += [f"# {c.why}", c.text()]
    ct = topo.kube_proxy.conntrack
    out += [
        "# in each worker's network namespace (/proc/<container pid>/ns/net), through the lab's Host handles:",
        f"#   add the plan address as <ip>/32 on eth0; sysctl nf_conntrack_tcp_be_liberal={int(ct.tcp_be_liberal)}",
    ]
    for elb in topo.elb_nodes:
        for c in (elb_command(topo, plan, lab, state_dir, elb.name),
                  checker_command(lab, state_dir, elb.name, image, checker_script)):  # fmt: skip
            out += [f"# {c.why}", c.text()]
    for client, ip in client_ips(topo).items():
        c = client_command(topo, lab, client, ip, image)
        out += [f"# {c.why}", c.text()]
    out += [
        "# in each ELB node's namespace: the backend-connection accounting rules (lab.metrics), then",
        f"#   touch {state_dir}/elb/<elb>/{ELB_START_FILE}  (HAProxy and its checker start; a config change restarts",
        "#   HAProxy in place)",
    ]
    out += ["", "## lab down"]
    out += destroy_text(lab)
    out += [
        "",
        "## not the same as the netns backend",
        f"# conntrack max: kind's kube-proxy keeps maxPerCore 0, so the nodes share this machine's global "
        f"nf_conntrack_max (the topology's {topo.conntrack_max} is not applied)",
        "# no VPC routers and no client VPC: clients sit on the cluster VPC's network; pod IPs come from kindnet",
    ]
    if topo.kube_proxy.flavour == "legacy":
        out.append(
            f"# legacy: Kubernetes {img.kubernetes} is the oldest node image of kind {KIND_VERSION}; its kube-proxy "
            "has KUBE-EXT chains, the INVALID drop rule and --random-fully (1.5's chains: --backend netns)"
        )
    return "\n".join(out) + "\n"
