"""The kind backend: the topology as a kind cluster, with HAProxy ELB nodes and clients as Docker containers.

Hosts are handed out as the same lab.hosts.Host handles as the netns backend, so faults, load and metrics
run unchanged: a node, ELB node or client is the network namespace of its container (/proc/<pid>/ns/net,
the pid from `docker inspect`); a pod is the namespace containerd made for it inside its node container,
reached through the node's root (/proc/<node pid>/root/run/netns/cni-...), found by the pod's address.

Everything is journaled in the lab's state directory before it is created and carries the lab's name
(lab-<lab> network, cluster and containers; Docker label k8s-elb-lab.lab=<lab>), so `lab down` and
`lab clean` remove exactly that. The lab itself adds nothing to this machine's own namespace: the Docker
network's bridge and rules are Docker's, as with any kind cluster (see docs/kind.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.backends.base import Progress
from lab.backends.elbnode import install_accounting
from lab.errors import EnvironmentProblem, InputError, LabError, LabStateError
from lab.hosts import Host, netns_iproute, pids_in_netns
from lab.render import kind as render
from lab.render.accounting import instances_of
from lab.render.haproxy import render_haproxy
from lab.render.healthcheck import render_checker
from lab.runtime import elbcheck
from lab.state import LabState, all_labs

if TYPE_CHECKING:
    from lab.spec import LabSpec

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
KIND_CLUSTER_LABEL = "io.x-k8s.kind.cluster"  # kind's own label on its node containers
TOOLS = {
    "docker": "Docker Engine (Debian: apt-get install docker.io; elsewhere https://docs.docker.com/engine/install/)",
    "kind": f"kind {render.KIND_VERSION} (go install sigs.k8s.io/kind@{render.KIND_VERSION}, or its release binary)",
    "kubectl": "kubectl (Debian: apt-get install kubernetes-client)",
}
ELB_READY_TIMEOUT = 60.0
POD_READY_TIMEOUT = 180.0
KUBE_PROXY_SYNC_TIMEOUT = 15.0
OVERRIDES_ANNOTATION = "k8s-elb-lab/overrides"
RESTARTED_ANNOTATION = "k8s-elb-lab/restarted-at"


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run docker / kind / kubectl; a failure becomes one LabError line naming the command."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except FileNotFoundError:
        raise EnvironmentProblem(f"{argv[0]} is not installed; install {TOOLS.get(argv[0], argv[0])}") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv[:4])} ...` did not finish within {timeout:g}s") from None
    if check and proc.returncode != 0:
        detail = _tail(proc.stderr) or _tail(proc.stdout) or f"exit code {proc.returncode}"
        raise LabError(f"`{' '.join(argv[:4])} ...` failed: {detail}")
    return proc


def docker(*args: str, check: bool = True, timeout: float = 60) -> str:
    """stdout of one docker command ('' when check is off and it failed)."""
    proc = run(["docker", *args], check=check, timeout=timeout)
    return proc.stdout if proc.returncode == 0 else ""


def service_image() -> str:
    """The service image's tag: a digest of what `docker build services/` uses, so a change means a new build."""
    digest = hashlib.sha256()
    files = [SERVICES_DIR / "Dockerfile", SERVICES_DIR / ".dockerignore", *(SERVICES_DIR / "labservices").rglob("*")]
    for path in sorted(files):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(SERVICES_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{render.SERVICE_IMAGE_REPO}:{digest.hexdigest()[:12]}"


def docker_reachable() -> str | None:
    """None when a Docker engine answers, else why not (one line)."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        proc = run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=15, check=False)
    except LabError as exc:
        return str(exc)
    if proc.returncode != 0:
        return _tail(proc.stderr) or "no answer"
    return None


class KindBackend:
    name = "kind"

    def __init__(self) -> None:
        self._hosts: tuple[str, dict[str, Host]] | None = None  # (lab, hosts) until a container or pod changes

    # --- checks and plans (no side effects) ---

    def check_topology(self, lab: LabSpec) -> None:
        problem = render.unsupported(lab.topology)
        if problem:
            raise InputError(f"{lab.source or 'topology'}: {problem}")

    def preflight(self, lab: LabSpec) -> None:
        self.check_topology(lab)
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise EnvironmentProblem(
                f"the kind backend needs {', '.join(missing)}: install " + "; ".join(TOOLS[t] for t in missing)
            )
        if os.geteuid() != 0:
            raise EnvironmentProblem(
                "the kind backend needs root (faults and metrics enter the containers' network namespaces): "
                "run with sudo"
            )
        why = docker_reachable()
        if why:
            raise EnvironmentProblem(
                f"the Docker engine is not reachable ({why}); start it (e.g. systemctl start docker) or set DOCKER_HOST"
            )
        names = render.KindNames(lab.name)
        if docker("network", "inspect", names.network, check=False):
            raise LabStateError(f"Docker network {names.network} exists; run `lab clean` or choose another --name")

    def plan_text(self, lab: LabSpec) -> str:
        self.check_topology(lab)
        return render.plan_text(
            lab.topology,
            lab.plan,
            lab.name,
            lab.state.dir,
            service_image(),
            SERVICES_DIR,
            lab.time_scale,
            lab.source,
            checker_script=Path(elbcheck.__file__),
        )

    # --- build ---

    def build(self, lab: LabSpec, progress: Progress) -> None:
        topo, plan, state = lab.topology, lab.plan, lab.state
        names = render.KindNames(lab.name)
        image = service_image()

        progress(f"creating Docker network {names.network} ({topo.vpcs.cluster.cidr})")
        state.record("docker-network", name=names.network)
        net = render.network_command(topo, lab.name)
        run(net.argv)

        if run(["docker", "image", "inspect", image], check=False, timeout=30).returncode != 0:
            progress(f"building the service image {image}")
            run(render.image_build_command(image, SERVICES_DIR).argv, timeout=900)

        state.path("kind.yaml").write_text(render.to_yaml(render.kind_config(topo, lab.name)))
        state.path("manifests.yaml").write_text(render.to_yaml(render.manifests(topo, plan, image)))
        create, load, apply = render.cluster_commands(topo, lab.name, state.dir, image)
        progress(f"creating kind cluster {names.cluster}: 1 control plane + {len(topo.k8s_nodes)} workers (minutes)")
        state.record("kind-cluster", name=names.cluster)
        run(create.argv, env=dict(create.env), timeout=render.READY_TIMEOUT_S + 1200)  # may pull the node image
        progress("loading the service image into the nodes")
        run(load.argv, timeout=600)

        progress("mapping kind workers to topology nodes")
        node_map = self._map_nodes(lab)
        state.path("kind-nodes.json").write_text(json.dumps(node_map, indent=2))
        hosts = self._find_hosts(lab, pods=False)
        progress("adding each node's plan address and sysctls (inside the node containers' namespaces)")
        self._setup_nodes(lab, hosts)

        progress(f"applying {len(topo.pods)} Deployments and {len(topo.services)} NodePort Services")
        run(apply.argv, timeout=120)
        for namespace in sorted({s.namespace for s in topo.services}):
            run(render.rollout_command(lab.name, state.dir, namespace).argv, timeout=render.READY_TIMEOUT_S + 30)

        progress(f"starting {len(topo.elb_nodes)} ELB nodes (HAProxy containers) and the client tier")
        for elb in topo.elb_nodes:
            cmd = self.prepare_elb(lab, elb.name)
            state.record("container", name=names.container(elb.name))
            run(cmd.argv, timeout=600)  # the first run pulls the HAProxy image
            state.record("container", name=names.container(f"{elb.name}-check"))
            run(render.checker_command(lab.name, state.dir, elb.name, image, Path(elbcheck.__file__)).argv, timeout=120)
        for client, ip in render.client_ips(topo).items():
            state.record("container", name=names.container(client))
            run(render.client_command(topo, lab.name, client, ip, image).argv, timeout=120)
        self.release_elbs(lab, [e.name for e in topo.elb_nodes])
        self._wait_elbs(lab)

    def prepare_elb(self, lab: LabSpec, elb: str) -> render.Command:
        """Write an ELB node's haproxy.cfg and make its run directory; return the docker command that starts it."""
        spec = next(e for e in lab.topology.elb_nodes if e.name == elb)
        inside, outside = render.haproxy_paths(lab.state.dir, elb)
        cfg_dir = lab.state.path("elb", elb)
        cfg_dir.mkdir(parents=True, exist_ok=True)
        (cfg_dir / render.ELB_START_FILE).unlink(missing_ok=True)
        outside.stats_socket.parent.mkdir(parents=True, exist_ok=True)
        (cfg_dir / "haproxy.cfg").write_text(render_haproxy(lab.topology, lab.plan, spec, inside, lab.time_scale))
        (cfg_dir / render.CHECKER_FILE).write_text(render_checker(lab.topology, lab.plan, spec, lab.time_scale))
        return render.elb_command(lab.topology, lab.plan, lab.name, lab.state.dir, elb)

    def release_elbs(self, lab: LabSpec, elbs: list[str]) -> None:
        """Instrument each ELB node's namespace (the backend-connection accounting lab.metrics reads), then let its
        HAProxy start, so counting starts at zero as on the netns backend."""
        self._forget_hosts()  # the containers exist now
        for name in elbs:
            install_accounting(self.hosts(lab)[name], instances_of(lab.topology, lab.plan, name))
            lab.state.path("elb", name, render.ELB_START_FILE).touch()

    def _map_nodes(self, lab: LabSpec) -> dict[str, str]:
        """Topology node -> kind node (= container) name, from the node label set in the kind config."""
        out = run(self._kubectl(lab, "get", "nodes", "-o", "json"), timeout=60).stdout
        mapping = {}
        for item in json.loads(out)["items"]:
            label = item["metadata"].get("labels", {}).get(render.NODE_LABEL)
            if label:
                mapping[label] = item["metadata"]["name"]
        missing = [n.name for n in lab.topology.k8s_nodes if n.name not in mapping]
        if missing:
            raise LabError(f"kind workers for {', '.join(missing)} did not register; see `kind export logs`")
        return mapping

    def _setup_nodes(self, lab: LabSpec, hosts: dict[str, Host]) -> None:
        sysctls: dict[str, dict[str, str]] = {}
        for host, key, value in lab.plan.sysctls:
            sysctls.setdefault(host, {})[key] = value
        nodes = [n.name for n in lab.topology.k8s_nodes]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda node: setup_node(hosts[node], sysctls.get(node, {})), nodes))

    def _wait_elbs(self, lab: LabSpec, elbs: list[str] | None = None) -> None:
        from lab.haproxy_stats import show_stat

        deadline = time.monotonic() + ELB_READY_TIMEOUT
        for elb in lab.topology.elb_nodes:
            if elbs is not None and elb.name not in elbs:
                continue
            sock = self.elb_stats_socket(lab, elb.name)
            while True:
                try:
                    show_stat(sock)
                    break
                except LabError:
                    if time.monotonic() > deadline:
                        container = render.KindNames(lab.name).container(elb.name)
                        logs = run(["docker", "logs", "--tail", "5", container], check=False).stderr
                        raise LabError(f"ELB node {elb.name} did not start: {_tail(logs) or 'no log'}") from None
                    time.sleep(0.2)

    def _kubectl(self, lab: LabSpec, *args: str) -> list[str]:
        return ["kubectl", "--kubeconfig", str(lab.state.path("kubeconfig")), *args]

    # --- running lab ---

    def _inspect(self, containers: list[str]) -> dict[str, dict[str, Any]]:
        if not containers:
            return {}
        proc = run(["docker", "inspect", *containers], check=False, timeout=30)
        return {c["Name"].lstrip("/"): c for c in json.loads(proc.stdout or "[]")}

    def hosts(self, lab: LabSpec) -> dict[str, Host]:
        """Every host, found in Docker and the cluster (cached until this backend changes a container or pod)."""
        if self._hosts is None or self._hosts[0] != lab.name:
            self._hosts = (lab.name, self._find_hosts(lab))
        return self._hosts[1]

    def _forget_hosts(self) -> None:
        self._hosts = None

    def _find_hosts(self, lab: LabSpec, pods: bool = True) -> dict[str, Host]:
        topo, plan = lab.topology, lab.plan
        names = render.KindNames(lab.name)
        try:
            node_map = json.loads(lab.state.path("kind-nodes.json").read_text())
        except (OSError, ValueError):
            node_map = {}
        clients = render.client_ips(topo)
        wanted = [names.container(e.name) for e in topo.elb_nodes] + [names.container(c) for c in clients]
        wanted += list(node_map.values())
        found = self._inspect(wanted)

        def netns_of(container: str) -> str:
            pid = found.get(container, {}).get("State", {}).get("Pid") or 0
            # A stopped or missing container: a path that does not exist, so Host.exists() says so.
            return f"/proc/{pid}/ns/net" if pid else f"/proc/0/ns/net#{container}"

        out: dict[str, Host] = {}
        for client, ip in clients.items():
            c = names.container(client)
            out[client] = Host(client, "client", netns_of(c), ip=str(ip), meta={"container": c})
        for elb in topo.elb_nodes:
            c = names.container(elb.name)
            ip = str(plan.ip(elb.name))
            out[elb.name] = Host(elb.name, "elb", netns_of(c), az=elb.az, ip=ip, meta={"container": c})
        for node in topo.k8s_nodes:
            c = node_map.get(node.name, "")
            out[node.name] = Host(
                node.name,
                "node",
                netns_of(c),
                az=node.az,
                ip=str(plan.ip(node.name)),
                # kind's kube-proxy keeps conntrack maxPerCore 0: the table limit is this machine's global one.
                meta={"container": c, "kube_proxy_conntrack_max_per_core": 0},
            )
        if pods and node_map:
            pids = {n: found.get(c, {}).get("State", {}).get("Pid") for n, c in node_map.items()}
            out.update(self._pod_hosts(lab, pids))
        return out

    def _get(self, lab: LabSpec, what: str) -> list[dict[str, Any]]:
        args = ("get", what, "--all-namespaces", "-l", "app.kubernetes.io/part-of=k8s-elb-lab", "-o", "json")
        return json.loads(run(self._kubectl(lab, *args), timeout=60).stdout)["items"]

    def _pods(self, lab: LabSpec) -> list[dict[str, Any]]:
        return self._get(lab, "pods")

    def _pod_hosts(self, lab: LabSpec, node_pids: dict[str, int | None]) -> dict[str, Host]:
        topo = lab.topology
        out: dict[str, Host] = {}
        by_node: dict[str, dict[str, str]] = {}  # node -> pod IP -> lab pod name
        for item in self._pods(lab):
            name = item["metadata"].get("labels", {}).get(render.POD_LABEL)
            ip = item.get("status", {}).get("podIP")
            if name and ip and item["metadata"].get("deletionTimestamp") is None:
                pod = next((p for p in topo.pods if p.name == name), None)
                if pod:
                    by_node.setdefault(pod.node, {})[ip] = name
        for node, ips in by_node.items():
            pid = node_pids.get(node)
            paths = pod_netns_by_ip(pid, set(ips)) if pid else {}
            for ip, name in ips.items():
                pod = next(p for p in topo.pods if p.name == name)
                path = paths.get(ip, f"/proc/0/ns/net#{name}")
                out[name] = Host(name, "pod", path, az=topo.node(node).az, ip=ip, node=node, service=pod.service)
        return out

    def processes(self, lab: LabSpec) -> list[dict[str, Any]]:
        names = render.KindNames(lab.name)
        procs = []
        elbs = [e.name for e in lab.topology.elb_nodes]
        found = self._inspect([names.container(n) for e in elbs for n in (e, f"{e}-check")])
        for elb in elbs:
            for name, container in ((f"elb/{elb}", elb), (f"check/{elb}", f"{elb}-check")):
                inspected = found.get(names.container(container), {})
                c = inspected.get("State", {})
                running = bool(c.get("Running"))
                procs.append(
                    {
                        "name": name,
                        "pid": c.get("Pid") or None,
                        "state": "running" if running else ("exited" if c else "missing"),
                        "ready": running
                        and (
                            self.elb_checker_socket(lab, elb)
                            if name.startswith("check/")
                            else self.elb_stats_socket(lab, elb)
                        ).exists(),
                        "restarts": inspected.get("RestartCount", 0),
                        "exit_code": None if running else c.get("ExitCode"),
                    }
                )
        deployments = self._get(lab, "deployments")
        return procs + pod_views(lab.topology, deployments, self._pods(lab))

    def elb_stats_socket(self, lab: LabSpec, elb: str) -> Path:
        return render.haproxy_paths(lab.state.dir, elb)[1].stats_socket

    def control_pod(self, lab: LabSpec, pod: str, action: str, overrides: dict[str, Any] | None = None) -> None:
        spec = next((p for p in lab.topology.pods if p.name == pod), None)
        if spec is None:
            raise InputError(f"lab '{lab.name}' has no pod '{pod}'")
        if action not in ("stop", "start", "restart"):
            raise InputError(f"pod action {action!r}: choose stop, start or restart")
        svc = lab.topology.service(spec.service)
        ns = ("-n", svc.namespace)
        patch = pod_patch(svc.port, svc.backlog, action, overrides, time.time())
        run(self._kubectl(lab, *ns, "patch", "deployment", pod, "--type=strategic", "-p", json.dumps(patch)))
        if action == "stop":
            selector = f"{render.POD_LABEL}={pod}"
            wait = run(
                self._kubectl(
                    lab, *ns, "wait", "--for=delete", "pod", "-l", selector, f"--timeout={POD_READY_TIMEOUT:g}s"
                ),
                timeout=POD_READY_TIMEOUT + 10,
                check=False,
            )
            if wait.returncode != 0 and "no matching resources" not in wait.stderr:
                raise LabError(f"pod {pod} did not stop: {_tail(wait.stderr)}")
        else:
            status = ("rollout", "status", "deployment", pod, f"--timeout={POD_READY_TIMEOUT:g}s")
            run(self._kubectl(lab, *ns, *status), timeout=POD_READY_TIMEOUT + 10)
        self._forget_hosts()  # the pod has a new sandbox: a new namespace and address

    def sync_kube_proxy(
        self, lab: LabSpec, nodes: list[str], endpoints: dict | None = None, topology: Any = None
    ) -> None:
        """On kind the API is real: apply the changed Services and let each node's kube-proxy re-sync itself."""
        if endpoints is not None:
            raise LabError(
                "on kind, endpoints come from Kubernetes' own endpoint controller; stop or start pods instead "
                "of rewriting endpoints"
            )
        topo = topology if topology is not None else lab.topology
        hosts = self.hosts(lab)
        before = {n: hosts[n].run(["iptables-save", "-t", "nat"]).stdout for n in nodes}
        docs = [d for d in render.manifests(topo, lab.plan, service_image()) if d["kind"] != "Deployment"]
        run(self._kubectl(lab, "apply", "-f", "-"), input=render.to_yaml(docs))
        ports = [f"--dport {s.node_port}" for s in topo.services]
        deadline = time.monotonic() + KUBE_PROXY_SYNC_TIMEOUT
        pending = set(nodes)
        while pending and time.monotonic() < deadline:
            time.sleep(0.5)  # kind's kube-proxy syncs at most once per second (iptables.minSyncPeriod)
            for node in sorted(pending):
                now = hosts[node].run(["iptables-save", "-t", "nat"]).stdout
                if now != before[node] and all(p in now for p in ports):
                    pending.discard(node)
        if pending:
            raise LabError(
                f"kube-proxy on {', '.join(sorted(pending))} did not re-sync within {KUBE_PROXY_SYNC_TIMEOUT:g}s"
            )

    def elb_config(self, lab: LabSpec, elb: str) -> str:
        return lab.state.path("elb", elb, "haproxy.cfg").read_text()

    def elb_checker_config(self, lab: LabSpec, elb: str) -> str:
        return lab.state.path("elb", elb, render.CHECKER_FILE).read_text()

    def set_elb_checker_config(self, lab: LabSpec, elb: str, text: str) -> None:
        path = lab.state.path("elb", elb, render.CHECKER_FILE)
        tmp = path.with_suffix(".tmp")  # same directory: the checker container sees the new file through its mount
        tmp.write_text(text)
        os.replace(tmp, path)
        if not elbcheck.wait_for_config(str(self.elb_checker_socket(lab, elb)), text, ELB_READY_TIMEOUT):
            raise LabError(f"the health checker of ELB node {elb} did not take its new config")

    def elb_checker_socket(self, lab: LabSpec, elb: str) -> Path:
        return lab.state.path("run", elb, render.CHECKER_SOCKET)

    def set_elb_config(self, lab: LabSpec, elb: str, text: str) -> None:
        path = lab.state.path("elb", elb, "haproxy.cfg")
        tmp = path.with_suffix(".tmp")  # same directory: the container sees the new file through its mount
        tmp.write_text(text)
        os.replace(tmp, path)
        # The container's loop restarts HAProxy in the same namespace; a container restart would make a new one.
        running = haproxy_pids(self.hosts(lab)[elb])
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + ELB_READY_TIMEOUT
        while any(Path(f"/proc/{pid}").exists() for pid in running):
            if time.monotonic() > deadline:
                raise LabError(f"HAProxy of ELB node {elb} did not stop")
            time.sleep(0.05)
        self._wait_elbs(lab, [elb])

    # --- teardown ---

    def destroy(self, state: LabState) -> list[str]:
        removed: list[str] = []
        names = render.KindNames(state.name)
        if docker_reachable() is None:
            clusters = {e["name"] for e in state.recorded("kind-cluster")}
            clusters |= self._clusters_on_network(names.network)
            self._stop_lab_processes(state, clusters)
            for cluster in sorted(clusters):
                if shutil.which("kind"):
                    kubeconfig = state.path("kubeconfig")  # only ours: never the user's ~/.kube/config
                    extra = ["--kubeconfig", str(kubeconfig)] if kubeconfig.exists() else []
                    run(["kind", "delete", "cluster", "--name", cluster, *extra], timeout=300)
                nodes = docker("ps", "-aq", "--filter", f"label={KIND_CLUSTER_LABEL}={cluster}").split()
                if nodes:  # kind missing, or it left some behind
                    docker("rm", "--force", "--volumes", *nodes, timeout=120)
                removed.append(f"kind cluster {cluster}")
            mine = f"label={render.LABEL_LAB}={state.name}"
            listed = docker("ps", "-a", "--no-trunc", "--filter", mine, "--format", "{{.ID}} {{.Names}}")
            found = dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)  # full id -> name
            for c in (e["name"] for e in state.recorded("container")):
                cid = docker("inspect", "--format", "{{.Id}}", c, check=False).strip()
                if cid:
                    found[cid] = c  # full ids: one container, one removal
            if found:
                docker("rm", "--force", *sorted(found), timeout=120)
                removed += [f"container {c}" for c in sorted(found.values())]
            networks = {e["name"] for e in state.recorded("docker-network")}
            networks |= set(docker("network", "ls", "-q", "--filter", mine).split())
            for net in sorted(networks):
                if docker("network", "inspect", net, check=False):
                    docker("network", "rm", net)
                    removed.append(f"network {net}")
        elif state.recorded("docker-network") and state.exists():
            raise EnvironmentProblem(
                f"lab '{state.name}' has Docker resources but the Docker engine is not reachable; start it and retry"
            )
        if state.dir.exists():
            shutil.rmtree(state.dir, ignore_errors=True)
        return removed

    def _stop_lab_processes(self, state: LabState, clusters: set[str]) -> None:
        """Processes this machine started inside the lab's containers' namespaces (fault helpers, tools) would
        outlive the containers; the containers' own processes have their own pid namespace and go with them."""
        ids = docker("ps", "-q", "--filter", f"label={render.LABEL_LAB}={state.name}").split()
        for cluster in clusters:
            ids += docker("ps", "-q", "--filter", f"label={KIND_CLUSTER_LABEL}={cluster}").split()
        pids = [c.get("State", {}).get("Pid") for c in self._inspect(ids).values()] if ids else []
        paths = []
        for pid in filter(None, pids):
            paths.append(f"/proc/{pid}/ns/net")
            with contextlib.suppress(OSError):  # pods' namespaces inside a kind node
                paths += [str(p) for p in Path(f"/proc/{pid}/root/run/netns").iterdir()]
        mine = os.stat("/proc/self/ns/pid").st_ino
        for found in pids_in_netns(paths).values():
            for pid in found:
                with contextlib.suppress(OSError):
                    if os.stat(f"/proc/{pid}/ns/pid").st_ino == mine:
                        os.kill(pid, signal.SIGKILL)

    def _clusters_on_network(self, network: str) -> set[str]:
        """kind clusters with a node on the lab's network: the lab made them (kind nodes carry no lab label)."""
        fmt = '{{.Label "' + KIND_CLUSTER_LABEL + '"}}'
        return set(docker("ps", "-a", "--filter", f"network={network}", "--format", fmt, check=False).split())

    def orphans(self) -> list[str]:
        if docker_reachable() is not None:
            return []
        fmt = '{{.Label "' + render.LABEL_LAB + '"}}'
        labelled = f"label={render.LABEL_LAB}"
        labs = set(docker("network", "ls", "--filter", labelled, "--format", fmt).split())
        labs |= set(docker("ps", "-a", "--filter", labelled, "--format", fmt).split())
        with_state = {s.name for s in all_labs()}
        return sorted(lab for lab in labs if lab and lab != "image" and lab not in with_state)


def pod_patch(
    port: int, default_backlog: int, action: str, overrides: dict[str, Any] | None, now: float
) -> dict[str, Any]:
    """One strategic-merge patch of a pod's Deployment: replicas, and for (re)starts the server's flags.

    The overrides ride along as an annotation (what `processes` reports back); a restart stamps the pod
    template so Kubernetes replaces the pod even when nothing else changed.
    """
    patch: dict[str, Any] = {"spec": {"replicas": 0 if action == "stop" else 1}}
    template: dict[str, Any] = {}
    if overrides is not None:
        patch["metadata"] = {"annotations": {OVERRIDES_ANNOTATION: json.dumps(overrides, sort_keys=True)}}
        args = render.pod_args(
            port, int(overrides.get("backlog", default_backlog)), float(overrides.get("accept_delay", 0.0))
        )
        template["spec"] = {"containers": [{"name": "thrift", "args": args}]}
    if action == "restart":
        template["metadata"] = {"annotations": {RESTARTED_ANNOTATION: f"{now:.3f}"}}
    if template:
        patch["spec"]["template"] = template
    return patch


def pod_views(topo: Any, deployments: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each topology pod as the supervisor reports a process (state, ready, restarts, wanted, overrides)."""
    by_deployment = {d["metadata"]["name"]: d for d in deployments}
    current: dict[str, dict[str, Any]] = {}
    for item in pods:  # during a restart the old pod may still be terminating: the live one wins
        name = item["metadata"].get("labels", {}).get(render.POD_LABEL)
        if name and (name not in current or current[name]["metadata"].get("deletionTimestamp")):
            current[name] = item
    views = []
    for pod in topo.pods:
        dep = by_deployment.get(pod.name, {})
        annotations = dep.get("metadata", {}).get("annotations") or {}
        view: dict[str, Any] = {
            "name": f"pod/{pod.name}",
            "pid": None,
            "state": "stopped",
            "ready": False,
            "restarts": 0,
            "exit_code": None,
            "wanted": bool(dep.get("spec", {}).get("replicas", 1)),
            "overrides": json.loads(annotations.get(OVERRIDES_ANNOTATION, "{}")),
        }
        item = current.get(pod.name)
        if item is not None and not item["metadata"].get("deletionTimestamp"):
            st = (item.get("status", {}).get("containerStatuses") or [{}])[0]
            running = "running" in st.get("state", {})
            ended = st.get("state", {}).get("terminated") or st.get("lastState", {}).get("terminated") or {}
            view.update(
                state="running" if running else "exited",
                ready=bool(st.get("ready")),
                restarts=st.get("restartCount", 0),
                exit_code=None if running else ended.get("exitCode"),
                kubernetes_pod=item["metadata"]["name"],
                pod_ip=item.get("status", {}).get("podIP"),
            )
        views.append(view)
    return views


def haproxy_pids(host: Host) -> list[int]:
    """The HAProxy processes in an ELB node's namespace (this machine's pids of the container's processes)."""
    out = []
    for pid in pids_in_netns([host.netns]).get(host.netns, []):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "haproxy":
                out.append(pid)
    return out


def setup_node(host: Host, sysctls: dict[str, str]) -> None:
    """Give a kind node its plan address (a /32 beside Docker's on eth0) and the topology's sysctls. Idempotent.

    The ELB nodes health-check and send to the plan address; kube-proxy's NodePort rules match any local address.
    """
    with netns_iproute(host.netns) as ipr:
        eth0 = ipr.link_lookup(ifname="eth0")
        if not eth0:
            raise LabError(f"{host.name}: the node container has no eth0")
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=eth0[0], family=socket.AF_INET)}
        if host.ip not in have:
            ipr.addr("add", index=eth0[0], address=host.ip, prefixlen=32)
    host.set_sysctls(sysctls)


def pod_netns_by_ip(node_pid: int, pod_ips: set[str]) -> dict[str, str]:
    """Pod IP -> the pod's network namespace file, seen through the node container's root.

    containerd (inside the kind node) bind-mounts each pod sandbox's namespace under /run/netns; those mounts
    live in the node's mount namespace, which /proc/<node pid>/root reaches. /var/run is a symlink there and
    an absolute symlink would resolve on this machine, so the path avoids it.
    """
    found: dict[str, str] = {}
    root = Path(f"/proc/{node_pid}/root")
    for directory in (root / "run" / "netns", root / "var" / "run" / "netns"):
        if directory.is_symlink() or not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if len(found) == len(pod_ips):
                return found
            with contextlib.suppress(OSError, LabError):
                with netns_iproute(str(entry)) as ipr:
                    addrs = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
                for ip in addrs & pod_ips:
                    found[ip] = str(entry)
    return found


__all__ = ["KindBackend", "pod_netns_by_ip", "service_image", "setup_node"]
