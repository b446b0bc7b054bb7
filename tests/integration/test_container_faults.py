"""Lab code on container network namespaces, on a real Docker engine started by the test itself.

What the kind backend hands out - Host handles on /proc/<pid>/ns/net of a container, and on a pod's namespace
reached through its node container's root - is exercised here with the same code the backend runs: a node's
plan address and sysctls, pod namespace discovery, and the fault code (delay, conntrack) applied, observed
and reverted inside a container's namespace.

No image is pulled: a two-megabyte image is imported from busybox-static. NETWORK SAFETY: the engine is a
private dockerd with --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false,
its own data root, exec root and socket under a temporary directory (stopped and removed afterwards, always);
containers run with --network none and get their only link from a veth pair created inside a lab namespace
with its peer moved straight into the container's namespace. Nothing is added to this machine's namespace;
the first test checks that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import faults
from lab.backends.kind import pod_netns_by_ip, setup_node
from lab.backends.netns import netns_iproute
from lab.hosts import Host, create_netns, delete_netns, pids_in_netns
from lab.lab import Lab
from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render import kind
from tests.conftest import TOPOLOGIES, unique_lab_name

pytestmark = pytest.mark.root

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "mkdir", "touch", "mount", "unshare", "pidof", "cut", "nc", "ping", "cat")
IMAGE = "lab-test/busybox:local"
LABEL = "k8s-elb-lab.test=container-faults"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("dockerd") is None and not Path("/usr/sbin/dockerd").exists():
        return "dockerd is not installed (make setup installs Debian's docker.io)"
    if shutil.which("docker") is None:
        return "the docker client is not installed (make setup installs Debian's docker.io)"
    if not BUSYBOX.exists():
        return "busybox-static is not installed (make setup)"
    return None


def host_network_state() -> dict[str, str]:
    """This machine's own links, addresses, routes, firewall and forwarding: what the engine must not change."""

    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    links = json.loads(out("ip", "-json", "link") or "[]")
    return {
        "links": " ".join(sorted(f"{link['ifname']}:{link.get('operstate')}" for link in links)),
        "addresses": out("ip", "-4", "-o", "addr"),
        "routes": out("ip", "-4", "route", "show", "table", "all"),
        "iptables": "\n".join(ln for ln in out("iptables-save").splitlines() if not ln.startswith("#")),
        "nft": out("nft", "list", "ruleset"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


class PrivateDocker:
    """A dockerd of our own: no bridge, no iptables, no forwarding; everything under one temporary directory."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lab-dockerd-", dir="/tmp"))
        self.cgroup_parent = self.dir.name  # its containers' cgroups, removed with it
        self.socket = self.dir / "docker.sock"
        self.proc: subprocess.Popen | None = None
        self.etc_docker_existed = Path("/etc/docker").exists()
        self.key_existed = Path("/etc/docker/key.json").exists()

    def start(self) -> None:
        (self.dir / "daemon.json").write_text("{}")  # never read /etc/docker/daemon.json
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        argv = [
            dockerd,
            "--host", f"unix://{self.socket}",
            "--data-root", str(self.dir / "data"),
            "--exec-root", str(self.dir / "exec"),
            "--pidfile", str(self.dir / "dockerd.pid"),
            "--config-file", str(self.dir / "daemon.json"),
            "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
            "--bridge=none", "--userland-proxy=false", f"--cgroup-parent=/{self.cgroup_parent}",
        ]  # fmt: skip
        with open(self.dir / "dockerd.log", "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"private dockerd did not start: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "dockerd.log").read_text(errors="replace")[-800:]
        return ""

    def docker(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        proc = subprocess.run(["docker", *args], env=env, capture_output=True, input=input, timeout=120, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.decode(errors='replace').strip()}")
        return proc

    def import_busybox(self) -> None:
        """A minimal image from this machine's busybox-static, with `docker import` (no registry)."""
        tar_path = self.dir / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "run"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, arcname="bin/busybox")
            for applet in APPLETS:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        self.docker("import", "--change", 'CMD ["sleep", "3600"]', str(tar_path), IMAGE)

    def run(self, name: str, *args: str) -> int:
        """Start a container (no network) and return its pid."""
        self.docker("run", "--detach", "--name", name, "--label", LABEL, "--network", "none", *args)
        return int(self.docker("inspect", "--format", "{{.State.Pid}}", name).stdout.decode().strip())

    def cgroups(self) -> list[Path]:
        """Our cgroup parent in every hierarchy (cgroup v1 controllers, or the v2 root)."""
        root = Path("/sys/fs/cgroup")
        return [*root.glob(f"*/{self.cgroup_parent}"), *root.glob(self.cgroup_parent)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.decode().split()
            if ids:
                self.docker("rm", "--force", *ids, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Mounts the engine may have left under its directory (overlay, netns): deepest first.
        mounts = [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.dir))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        for cgroup in self.cgroups():
            for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        # dockerd 20.10 writes a trust key to /etc/docker whatever the flags: remove what we caused.
        if not self.etc_docker_existed:
            shutil.rmtree("/etc/docker", ignore_errors=True)
        elif not self.key_existed:
            Path("/etc/docker/key.json").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[PrivateDocker, dict[str, str]]]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    before = host_network_state()
    docker = PrivateDocker()
    try:
        docker.start()
        docker.import_busybox()
        yield docker, before
    finally:
        docker.stop()
    assert host_network_state() == before, "the private engine changed this machine's network state"
    assert not docker.dir.exists()
    assert not docker.cgroups(), "the engine left cgroups behind"


@pytest.fixture
def lab_peer() -> Iterator[Host]:
    """A lab namespace (tagged, as the lab tags its own) to sit on the other end of a container's veth."""
    lab = unique_lab_name("d")
    path = Path(f"/run/netns/lab.{lab}.peer")
    create_netns(path)
    try:
        with netns_iproute(str(path)) as ipr:
            ipr.link("set", ifname="lo", ifalias=f"lab:{lab}", state="up")
        yield Host("peer", "elb", str(path), ip="172.20.64.5")
    finally:
        delete_netns(path)


def wire(peer: Host, container_pid: int, peer_addr: str, container_addr: str) -> None:
    """A veth pair made inside the lab namespace, its peer end moved into the container's namespace as eth0."""
    with netns_iproute(peer.netns) as ipr:
        ipr.link(
            "add",
            ifname="eth0",
            kind="veth",
            state="up",
            peer={"ifname": "eth0", "net_ns_fd": f"/proc/{container_pid}/ns/net"},
        )
        index = ipr.link_lookup(ifname="eth0")[0]
        ip, prefix = peer_addr.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
    with netns_iproute(f"/proc/{container_pid}/ns/net") as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ip, prefix = container_addr.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
        ipr.link("set", index=index, state="up")


def nsenter(netns: str, *cmd: str) -> str:
    """An independent tool inside a namespace file."""
    proc = subprocess.run(["nsenter", f"--net={netns}", "--", *cmd], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr.strip()}"
    return proc.stdout


def is_mount(path: str) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except FileNotFoundError:
        return False


def listen(host: Host, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        return s

    return host.in_netns(make)


def test_the_private_engine_runs_containers_without_touching_this_machines_network(engine):
    docker, before = engine
    pid = docker.run("lab-probe", IMAGE)
    assert Path(f"/proc/{pid}/ns/net").exists()
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    assert host_network_state() == before
    assert "docker0" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    docker.docker("rm", "--force", "lab-probe")


def test_a_kind_node_gets_its_plan_address_and_sysctls_inside_its_container(engine, lab_peer):
    docker, _ = engine
    pid = docker.run("lab-node", IMAGE)
    try:
        wire(lab_peer, pid, "172.20.64.5/16", "172.20.0.2/16")  # eth0 as Docker gives it: one primary address
        node = Host("node-a1", "node", f"/proc/{pid}/ns/net", ip="172.20.64.16")
        setup_node(node, {"net.netfilter.nf_conntrack_tcp_be_liberal": "1"})
        setup_node(node, {"net.netfilter.nf_conntrack_tcp_be_liberal": "1"})  # idempotent

        addrs = json.loads(nsenter(node.netns, "ip", "-json", "-4", "addr", "show", "dev", "eth0"))[0]["addr_info"]
        assert sorted((a["local"], a["prefixlen"]) for a in addrs) == [("172.20.0.2", 16), ("172.20.64.16", 32)]
        assert nsenter(node.netns, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_be_liberal").strip() == "1"
        assert Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal").read_text().strip() == "0"  # ours: untouched

        # An ELB node reaches the node on its plan address (ARP for the /32 is answered on eth0).
        server = listen(node, 30090)
        try:
            sock, seconds = lab_peer.timed_connect(("172.20.64.16", 30090), timeout=3)
            sock.close()
        finally:
            server.close()
        neigh = json.loads(nsenter(lab_peer.netns, "ip", "-json", "neigh", "show", "172.20.64.16"))
        mac = json.loads(nsenter(node.netns, "ip", "-json", "link", "show", "eth0"))[0]["address"]
        assert neigh and neigh[0]["lladdr"] == mac
    finally:
        docker.docker("rm", "--force", "lab-node")


def test_a_pods_namespace_is_found_through_its_node_containers_root(engine):
    """As containerd does in a kind node: a pod sandbox's namespace bind-mounted at /run/netns/cni-* in the
    node container's own mount namespace, invisible from this machine's /run/netns."""
    docker, _ = engine
    script = (
        "mkdir -p /run/netns && touch /run/netns/cni-0001 && (unshare -n sleep 3600 &) && sleep 1 && "
        "mount --bind /proc/$(pidof sleep | cut -d' ' -f1)/ns/net /run/netns/cni-0001 && exec sleep 3600"
    )
    pid = docker.run(
        "lab-kindnode", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", IMAGE, "sh", "-c", script
    )
    try:
        path = f"/proc/{pid}/root/run/netns/cni-0001"
        deadline = time.monotonic() + 10
        while not is_mount(path):  # the container's script is still mounting it
            assert time.monotonic() < deadline, "the pod namespace was never mounted in the node container"
            time.sleep(0.1)
        with netns_iproute(path) as ipr:
            lo = ipr.link_lookup(ifname="lo")[0]
            ipr.link("set", index=lo, state="up")
            ipr.addr("add", index=lo, address="100.96.1.2", prefixlen=32)

        found = pod_netns_by_ip(pid, {"100.96.1.2", "100.96.9.9"})
        assert found == {"100.96.1.2": path}
        assert not Path("/run/netns/cni-0001").exists()
        assert os.stat(path).st_ino != os.stat(f"/proc/{pid}/ns/net").st_ino  # the pod's, not the node's
        pod = Host("accounts-0", "pod", path, ip="100.96.1.2")
        assert "100.96.1.2/32" in nsenter(pod.netns, "ip", "-4", "-o", "addr", "show", "dev", "lo")
        assert "inet 100.96.1.2/32" in pod.run(["ip", "-4", "addr", "show", "dev", "lo"]).stdout
    finally:
        docker.docker("rm", "--force", "lab-kindnode")


# --- the lab's fault code, unchanged, on a container's namespace ---------------------------------------------


@pytest.fixture
def container_node(engine, lab_peer) -> Iterator[tuple[Lab, Host, Host, PrivateDocker]]:
    """A 'node-a1' that is a container (as on kind), wired to an ELB-side lab namespace, inside a Lab whose
    hosts are those handles: the fault engine only ever sees the Host handles."""
    docker, _ = engine
    pid = docker.run("lab-faultnode", IMAGE)
    lab = Lab(
        name=unique_lab_name("d"), topology=load_model(Topology, TOPOLOGIES / "default.yaml"), backend_name="kind"
    )
    lab.state.create_dir()
    try:
        wire(lab_peer, pid, "172.20.64.5/16", "172.20.64.16/16")
        node = Host("node-a1", "node", f"/proc/{pid}/ns/net", az="us-east-1a", ip="172.20.64.16")
        # kube-proxy's rules make a kind node's namespace track connections; one such rule does here.
        node.run(["iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"])
        # The containers here are made by hand, not by kind: hand the backend its hosts (it caches them).
        lab.backend._hosts = (lab.name, {"node-a1": node, "elb-a1": lab_peer})
        yield lab, node, lab_peer, docker
    finally:
        with contextlib.suppress(Exception):
            faults.revert(lab)
        docker.docker("rm", "--force", "lab-faultnode", check=False)
        shutil.rmtree(lab.state.dir, ignore_errors=True)


def connect_ms(peer: Host, address: tuple[str, int], tries: int = 5) -> float:
    times = []
    for _ in range(tries):
        sock, seconds = peer.timed_connect(address, timeout=3)
        sock.close()
        times.append(seconds * 1000)
    return sorted(times)[len(times) // 2]


def ping_ms(docker: PrivateDocker, container: str, address: str) -> float:
    """Round trip measured by busybox ping inside the container: a tool independent of the lab."""
    out = docker.docker("exec", container, "ping", "-c", "3", "-W", "3", address).stdout.decode()
    summary = next(ln for ln in out.splitlines() if "min/avg/max" in ln)
    return float(summary.split("=")[1].split("/")[1])


def test_delay_fault_applies_and_reverts_inside_a_container_namespace(container_node):
    lab, node, peer, docker = container_node
    server = listen(node, 30090)
    try:
        assert ping_ms(docker, "lab-faultnode", "172.20.64.5") < 50
        result = faults.apply(lab, "link", target="node-a1", params=["delay=100ms"])
        fault = result["fault"]
        assert fault["state"] == "Injected"
        if fault["engine"] == "nfqueue":  # this kernel has no sch_netem: the userspace path
            saved = nsenter(node.netns, "iptables-save")
            assert f"-j LAB-FAULT-{fault['id']}" in saved and "NFQUEUE --queue-num" in saved
        else:
            assert "netem" in nsenter(node.netns, "tc", "qdisc", "show", "dev", "eth0")
        during_ping = ping_ms(docker, "lab-faultnode", "172.20.64.5")
        during_connect = connect_ms(peer, ("172.20.64.16", 30090))
        print(f"delay 100ms ({fault['engine']}): ping {during_ping:.1f} ms, connect {during_connect:.1f} ms")
        assert during_ping >= 90  # 100 ms per round trip, half each way
        assert during_connect >= 90  # SYN in, SYN-ACK out: one round trip

        faults.revert(lab, [fault["id"]])
        assert f"LAB-FAULT-{fault['id']}" not in nsenter(node.netns, "iptables-save")
        assert "1ab:" not in nsenter(node.netns, "tc", "qdisc", "show", "dev", "eth0")
        assert ping_ms(docker, "lab-faultnode", "172.20.64.5") < 50
        assert not pids_in_namespace_of_this_machine(node.netns)  # the delay helper is gone
    finally:
        server.close()


def pids_in_namespace_of_this_machine(netns: str) -> list[int]:
    """Processes in that network namespace started from this machine (not the container's own)."""
    mine = os.stat("/proc/self/ns/pid").st_ino
    out = []
    for pid in pids_in_netns([netns]).get(netns, []):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == mine:
                out.append(pid)
    return out


def test_conntrack_fault_fills_the_containers_table_and_reverts(container_node):
    lab, node, peer, _docker = container_node
    server = listen(node, 30090)
    try:
        sock, _ = peer.timed_connect(("172.20.64.16", 30090), timeout=3)
        established = sock  # kept open across the fault: established flows keep working
        limit = int(nsenter(node.netns, "sysctl", "-n", "net.netfilter.nf_conntrack_max"))

        fault = faults.apply(lab, "conntrack-exhaustion", target="node-a1", params=["free=0"])["fault"]
        assert fault["state"] == "Injected"
        assert int(nsenter(node.netns, "conntrack", "-C").strip()) >= limit - 1
        drops_before = conntrack_drops(node)
        with pytest.raises(OSError):  # the SYN is dropped: no conntrack entry can be made for it
            peer.timed_connect(("172.20.64.16", 30090), timeout=2)
        assert conntrack_drops(node) > drops_before

        faults.revert(lab, [fault["id"]])
        assert int(nsenter(node.netns, "conntrack", "-C").strip()) < 100
        again, _ = peer.timed_connect(("172.20.64.16", 30090), timeout=3)
        again.close()
        established.close()
    finally:
        server.close()


def conntrack_drops(host: Host) -> int:
    """`conntrack -S` in the namespace, summed over CPUs: packets dropped because no entry could be made."""
    total = 0
    for line in nsenter(host.netns, "conntrack", "-S").splitlines():
        for field in line.split():
            key, _, value = field.partition("=")
            if key in ("drop", "insert_failed"):
                total += int(value)
    return total


# --- the kind backend's ELB node: HAProxy in a container, with the rendered config and stats socket --------------

HAPROXY = Path("/usr/sbin/haproxy")


def haproxy_image(docker: PrivateDocker) -> str:
    """This machine's HAProxy (the netns backend's) and its libraries as an image: no registry needed."""
    image = "lab-test/haproxy-sh:local"
    if docker.docker("image", "inspect", image, check=False).returncode == 0:
        return image
    libs = [ln.split("=>")[-1].split("(")[0].strip() for ln in subprocess.run(
        ["ldd", str(HAPROXY)], capture_output=True, text=True, check=True).stdout.splitlines()]  # fmt: skip
    tar_path = docker.dir / "haproxy.tar"
    with tarfile.open(tar_path, "w", dereference=True) as tar:
        for d in ("tmp", "run", "etc", "dev", "proc", "sys", "usr/local/etc/haproxy"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(HAPROXY, arcname="usr/sbin/haproxy")
        tar.add(BUSYBOX, arcname="bin/busybox")  # the container's start loop is a shell script
        for applet in ("sh", "sleep", "cat"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        for lib in libs:
            if lib.startswith("/"):
                tar.add(lib, arcname=lib.lstrip("/"))
    docker.docker("import", str(tar_path), image)
    return image


def test_an_elb_node_container_runs_the_rendered_config_and_answers_on_its_stats_socket(engine, monkeypatch):
    """The ELB node exactly as the kind backend starts it (config and run directories mounted, the rendered
    haproxy.cfg, root inside), but on --network none: its eth0 and a node container's come from a bridge in
    a lab namespace. Its health checker checks the node's plan address and HAProxy asks it (on kind the checker
    is a container of the service image in the same namespace; this engine has no Python image, so this
    machine's Python runs it there); RPCs go client -> ELB -> node."""
    from labservices.client import call, client_on_socket
    from labservices.server import PodIdentity, serve

    from lab.backends.kind import KindBackend, haproxy_pids
    from lab.haproxy_stats import instance_health, show_stat
    from lab.load import LoadSpec, run_load
    from lab.metrics.accounting import read_counts
    from lab.runtime import elbcheck

    docker, _ = engine
    if not HAPROXY.exists():
        pytest.skip("haproxy is not installed (make setup)")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{docker.socket}")  # the backend's own docker calls: our engine
    image = haproxy_image(docker)
    topo = load_model(Topology, TOPOLOGIES / "default.yaml")
    lab = Lab(name=unique_lab_name("d"), topology=topo, backend_name="kind", time_scale=0.1)
    lab.state.create_dir()
    backend = KindBackend()
    switch = Path(f"/run/netns/lab.{lab.name}.switch")
    create_netns(switch)
    stop = threading.Event()
    containers: list[str] = []
    checker = None
    try:
        with netns_iproute(str(switch)) as ipr:
            ipr.link("set", ifname="lo", ifalias=f"lab:{lab.name}", state="up")
            ipr.link("add", ifname="br0", kind="bridge", state="up")
        client_pid = docker.run("lab-elbclient", IMAGE)  # the client tier: a container, as on kind
        containers.append("lab-elbclient")
        plug(switch, client_pid, "vclient", "172.20.63.254/16")
        client = Host("apollo-1", "client", f"/proc/{client_pid}/ns/net", ip="172.20.63.254")

        node_pid = docker.run("lab-elbnode", IMAGE)
        containers.append("lab-elbnode")
        plug(switch, node_pid, "vnode", "172.20.0.2/16")
        node = Host("node-a1", "node", f"/proc/{node_pid}/ns/net", ip="172.20.64.16")
        setup_node(node, {})
        for svc in topo.services:  # the pods behind the NodePorts (here the node's own sockets)
            listener = listen(node, svc.node_port)
            identity = PodIdentity(service=svc.name, pod=f"{svc.name}-0", node="node-a1", az="us-east-1a")
            threading.Thread(target=serve, args=(listener, identity, stop), daemon=True).start()

        cmd = backend.prepare_elb(lab, "elb-a1")
        argv = list(cmd.argv)
        at = argv.index("--network")
        del argv[at : at + 4]  # --network lab-<lab> --ip <plan address>: a Docker network would be a bridge here
        argv[argv.index(kind.HAPROXY_IMAGE)] = image
        docker.docker(*argv[1:3], "--network", "none", "--label", LABEL, *argv[3:])
        elb_container = kind.KindNames(lab.name).container("elb-a1")
        containers.append(elb_container)
        elb_pid = int(docker.docker("inspect", "--format", "{{.State.Pid}}", elb_container).stdout.decode())
        plug(switch, elb_pid, "velb", "172.20.64.5/16")
        assert not (show_stat_or_none(backend.elb_stats_socket(lab, "elb-a1")))  # HAProxy waits for the lab

        backend.release_elbs(lab, ["elb-a1"])  # the ELB node's namespace instrumented, then HAProxy starts
        checks = lab.state.path("elb", "elb-a1", kind.CHECKER_FILE)  # what prepare_elb rendered for the checker
        checker = subprocess.Popen(
            ["nsenter", f"--net=/proc/{elb_pid}/ns/net", sys.executable, "-S", elbcheck.__file__, str(checks),
             "--socket", str(backend.elb_checker_socket(lab, "elb-a1"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert lab.host("elb-a1").netns == f"/proc/{elb_pid}/ns/net"  # the backend's own handle
        assert "-j LAB-ELB-ATTEMPTS" in nsenter(f"/proc/{elb_pid}/ns/net", "iptables-save", "-t", "filter")
        backend._wait_elbs(lab, ["elb-a1"])  # through the stats socket, from this machine
        sock = backend.elb_stats_socket(lab, "elb-a1")
        assert sock == lab.state.path("run", "elb-a1", "haproxy.sock")
        deadline = time.monotonic() + 15
        while instance_health(show_stat(sock)).get("node-a1", {}).get("state") != "InService":
            assert time.monotonic() < deadline, instance_health(show_stat(sock))
            time.sleep(0.2)
        listening = nsenter(f"/proc/{elb_pid}/ns/net", "ss", "-ltn")
        assert "172.20.64.5:9090" in listening and "172.20.64.5:9091" in listening

        for listener, service in ((9090, "accounts"), (9091, "catalog")):
            conn = client.connect(("172.20.64.5", listener))
            try:
                who = call(client_on_socket(conn, timeout=3), "whoami", [])
            finally:
                conn.close()
            assert (who["service"], who["node"]) == (service, "node-a1")
            assert who["client_ip"] == "172.20.64.5"  # HAProxy's own connection to the node
        # The lab's load generator, its workers inside the client container's namespace, through the ELB node.
        lab.backend._hosts = (
            lab.name,
            {"apollo-1": client, "elb-a1": Host("elb-a1", "elb", f"/proc/{elb_pid}/ns/net")},
        )
        load = run_load(lab, LoadSpec(service="catalog", rate=50, duration=2, target="elb-a1")).to_dict()
        assert load["source"] == "apollo-1" and load["requests"] == load["scheduled"] == 100
        assert load["outcomes"]["ok"] == 100, load["outcomes"]
        backend_rows = [r for r in show_stat(sock) if r["pxname"] == "catalog" and r["svname"] == "node-a1"]
        assert int(backend_rows[0]["stot"]) >= 1  # HAProxy's own count of sessions to the node
        counts = read_counts(lab.host("elb-a1"), {"node-a1": "172.20.64.16"})["node-a1"]
        # The kernel counted every backend connect: the load's pooled connections, both whoami, the checks.
        assert counts.attempts >= load["connections_opened"] + 2 and counts.attempts == counts.established

        # A configuration change (what the ELB idle-timeout fault does) restarts HAProxy in the same namespace.
        before = haproxy_pids(lab.host("elb-a1"))
        text = backend.elb_config(lab, "elb-a1").replace("timeout client 6000ms", "timeout client 2000ms")
        backend.set_elb_config(lab, "elb-a1", text)
        assert haproxy_pids(lab.host("elb-a1")) and set(haproxy_pids(lab.host("elb-a1"))).isdisjoint(before)
        inside = docker.docker("exec", elb_container, "cat", f"{kind.HAPROXY_DIR}/haproxy.cfg").stdout.decode()
        assert "timeout client 2000ms" in inside
        assert "-j LAB-ELB-ATTEMPTS" in nsenter(f"/proc/{elb_pid}/ns/net", "iptables-save", "-t", "filter")
        conn = client.connect(("172.20.64.5", 9090))
        conn.close()
        logs = docker.docker("logs", elb_container).stdout.decode()
        assert "Agent check for server elb-health/node-a1 succeeded" in logs  # the checker said up
        assert elbcheck.read_status(str(backend.elb_checker_socket(lab, "elb-a1")))["node-a1"]["last"] == "ok"
    finally:
        if checker is not None:
            checker.kill()
            checker.wait()
        stop.set()
        for c in containers:
            docker.docker("rm", "--force", c, check=False)
        delete_netns(switch)
        shutil.rmtree(lab.state.dir, ignore_errors=True)


def show_stat_or_none(sock: Path) -> list | None:
    from lab.errors import LabError
    from lab.haproxy_stats import show_stat

    try:
        return show_stat(sock)
    except LabError:
        return None


def plug(switch: Path, pid: int, ifname: str, address: str) -> None:
    """A veth from the lab namespace's bridge to the container's eth0."""
    with netns_iproute(str(switch)) as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": f"/proc/{pid}/ns/net"})
        ipr.link("set", ifname=ifname, master=ipr.link_lookup(ifname="br0")[0], state="up")
    with netns_iproute(f"/proc/{pid}/ns/net") as ipr:
        index = ipr.link_lookup(ifname="eth0")[0]
        ip, prefix = address.split("/")
        ipr.addr("add", index=index, address=ip, prefixlen=int(prefix))
        ipr.link("set", index=index, state="up")


# --- the kind backend's teardown on a real engine -----------------------------------------------------------------


def test_kind_teardown_removes_what_the_journal_and_labels_name_and_stops_our_processes_inside(engine, monkeypatch):
    """Containers standing in for a kind cluster's nodes (kind's own label) and for ELB/client containers (the
    lab's label), a fault-helper-like process this machine started inside one of them; `kind` itself is
    absent here, so destroy falls back to removing the cluster's labelled containers."""
    from lab.backends.kind import KindBackend
    from lab.state import LabState

    docker, _ = engine
    monkeypatch.setenv("DOCKER_HOST", f"unix://{docker.socket}")
    monkeypatch.setenv("PATH", ":".join(p for p in os.environ["PATH"].split(":") if not Path(p, "kind").exists()))
    name = unique_lab_name("d")
    names = kind.KindNames(name)
    state = LabState(name)
    state.create_dir()
    state.record("kind-cluster", name=names.cluster)
    state.record("container", name=names.container("elb-a1"))
    node_pid = docker.run(f"{names.cluster}-worker", "--label", f"io.x-k8s.kind.cluster={names.cluster}", IMAGE)
    docker.run(names.container("elb-a1"), "--label", f"{kind.LABEL_LAB}={name}", IMAGE)
    docker.run(names.container("apollo-1"), "--label", f"{kind.LABEL_LAB}={name}", IMAGE)
    orphan = unique_lab_name("d")
    docker.run(f"lab-{orphan}-elb-a1", "--label", f"{kind.LABEL_LAB}={orphan}", IMAGE)
    helper = Host("node-a1", "node", f"/proc/{node_pid}/ns/net").popen(["sleep", "300"])
    try:
        backend = KindBackend()
        assert orphan in backend.orphans() and name not in backend.orphans()  # ours has a state directory

        removed = backend.destroy(state)
        assert f"kind cluster {names.cluster}" in removed
        assert {f"container {names.container('elb-a1')}", f"container {names.container('apollo-1')}"} <= set(removed)
        assert helper.wait(timeout=10) == -signal.SIGKILL  # it would have outlived the container
        left = docker.docker("ps", "-a", "--format", "{{.Names}}").stdout.decode().split()
        assert left == [f"lab-{orphan}-elb-a1"]
        assert not state.dir.exists()
        assert backend.destroy(state) == []  # idempotent

        backend.destroy(LabState(orphan))
        assert docker.docker("ps", "-aq").stdout.decode().split() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            helper.kill()
        helper.wait(timeout=5)
        shutil.rmtree(state.dir, ignore_errors=True)
