"""The default backend: every lab host is a Linux network namespace on this machine.

Nothing is created in the host's own namespace: veth pairs are created inside a lab namespace with
their peer placed straight into another one, so the host's links, routes, iptables and sysctls are
never touched. Everything is named lab.<lab>.<host>, tagged (an alias on the namespace's loopback)
and journaled in the lab's state directory before it is created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyroute2 import IPRoute

from lab.backends.base import Progress
from lab.backends.elbnode import install_accounting
from lab.errors import EnvironmentProblem, InputError, LabError, LabStateError
from lab.hosts import Host, create_netns, delete_netns, is_zombie, netns_iproute, pids_in_netns, process_cmdline
from lab.models.topology import all_cidrs
from lab.render.accounting import instances_of
from lab.render.haproxy import HaproxyPaths, render_haproxy
from lab.render.healthcheck import render_checker
from lab.render.kubeproxy import render_node, stale_chains
from lab.render.plan import describe
from lab.runtime import control, elbcheck
from lab.state import NETNS_PREFIX, LabState, netns_name, split_netns_name

if TYPE_CHECKING:
    from lab.spec import LabSpec

NETNS_DIR = Path("/run/netns")
TAG_PREFIX = "lab:"  # ifalias of lo in every namespace the lab creates: "lab:<lab name>"
REQUIRED_TOOLS = {
    "haproxy": "haproxy",
    "iptables-restore": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "tc": "iproute2",
}
READY_TIMEOUT = 20.0
SUPERVISOR_MODULE = "lab.runtime.supervisor"

# Every lab namespace: no IPv6 (keeps captures to the IPv4 path the lab is about).
BASE_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
# Where this kernel has it: SYNs resent after 1, 3, 7 s (exponential backoff), as on the seed's 2017 kernels.
# Linux 6.5+ resends the first 4 at 1 s intervals by default (1, 2, 3, 4 s), which changes every
# "connect succeeded late" and "1 s / 3 s" figure the hypotheses are about.
KERNEL_ERA_SYSCTLS = {"net.ipv4.tcp_syn_linear_timeouts": "0"}
# Routers switch same-subnet traffic on their bridges; keep that out of the router's netfilter.
ROUTER_SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "0"}


def haproxy_paths(state: LabState, elb: str) -> HaproxyPaths:
    return HaproxyPaths(stats_socket=state.path("run", f"{elb}.sock"), pid_file=state.path("run", f"{elb}.pid"))


def checker_config_path(state: LabState, elb: str) -> Path:
    return state.path("run", f"{elb}.checks.json")


def checker_socket_path(state: LabState, elb: str) -> Path:
    return state.path("run", f"{elb}.checks.sock")


class NetnsBackend:
    name = "netns"

    def __init__(self) -> None:
        self._hosts: tuple[str, dict[str, Host]] | None = None

    # --- checks and plans (no side effects) ---

    def preflight(self, lab: LabSpec) -> None:
        if os.geteuid() != 0:
            raise EnvironmentProblem("the netns backend needs root (it creates network namespaces): run with sudo")
        missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
        if missing:
            raise EnvironmentProblem(f"missing Debian packages: {', '.join(missing)}; run `make setup`")
        check_host_routes(lab)

    def plan_text(self, lab: LabSpec) -> str:
        topo, plan, state = lab.topology, lab.plan, lab.state
        out = [f"# lab '{lab.name}' (backend netns) from {lab.source or 'topology'}", ""]
        out.append("## namespaces")
        out += [f"netns {netns_name(lab.name, h.name)}" for h in plan.hosts]
        out += ["", "## network", describe(plan)]
        for node in topo.k8s_nodes:
            out += [
                f"## kube-proxy rules on {node.name} (iptables-restore --noflush)",
                render_node(topo, plan, node.name).text(),
            ]
        for elb in topo.elb_nodes:
            cfg = render_haproxy(topo, plan, elb, haproxy_paths(state, elb.name), lab.time_scale)
            out += [f"## haproxy.cfg of {elb.name}", cfg]
            out += [f"## health checker of {elb.name}", render_checker(topo, plan, elb, lab.time_scale)]
        out.append("## processes (started by the lab's supervisor)")
        for proc in process_specs(lab):
            what = " ".join(proc["argv"]) if "argv" in proc else f"thrift server {json.dumps(proc['pod'])}"
            out.append(f"process {proc['name']} in {proc['netns']}: {what}")
        return "\n".join(out) + "\n"

    # --- build ---

    def build(self, lab: LabSpec, progress: Progress) -> None:
        state, plan, topo = lab.state, lab.plan, lab.topology
        paths = {h.name: str(NETNS_DIR / netns_name(lab.name, h.name)) for h in plan.hosts}
        state.record("netns", names=[netns_name(lab.name, h) for h in paths])

        progress(f"creating {len(paths)} network namespaces")
        for path in paths.values():
            create_netns(Path(path))
        hosts = self.hosts(lab)
        self._start_supervisor(state)  # its interpreter starts while we build the network
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda h: h.set_sysctls(BASE_SYSCTLS), hosts.values()))
            list(pool.map(lambda h: h.set_sysctls(KERNEL_ERA_SYSCTLS, only_present=True), hosts.values()))

        progress("wiring bridges, veth pairs, addresses and routes")
        _wire(lab, paths)

        progress("setting sysctls")
        sysctls: dict[str, dict[str, str]] = {}
        for host, key, value in plan.sysctls:
            sysctls.setdefault(host, {})[key] = value
        for router in ("rt-client", "rt-cluster"):
            sysctls.setdefault(router, {}).update(ROUTER_SYSCTLS)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: hosts[item[0]].set_sysctls(item[1]), sysctls.items()))

        progress(f"applying kube-proxy ({topo.kube_proxy.flavour}) rules on {len(topo.k8s_nodes)} nodes")
        apply_kube_proxy(lab, [n.name for n in topo.k8s_nodes], first=True)
        # BackendConnectionErrors are counted by each ELB node's kernel (lab.render.accounting, read by lab.metrics)
        elbs = [(hosts[e.name], instances_of(topo, plan, e.name)) for e in topo.elb_nodes]
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda item: install_accounting(*item), elbs))

        progress(f"starting {len(topo.elb_nodes)} ELB nodes (HAProxy) and {len(topo.pods)} pods")
        for elb in topo.elb_nodes:
            cfg = render_haproxy(topo, plan, elb, haproxy_paths(state, elb.name), lab.time_scale)
            state.path("run", f"{elb.name}.haproxy.cfg").write_text(cfg)
            checker_config_path(state, elb.name).write_text(render_checker(topo, plan, elb, lab.time_scale))
        specs = process_specs(lab)
        state.processes_file.write_text(json.dumps({"lab": lab.name, "processes": specs}, indent=2))
        self._load_processes(state)
        self._wait_ready(lab)

    def _start_supervisor(self, state: LabState) -> None:
        state.record("supervisor", module=SUPERVISOR_MODULE)
        with open(state.path("logs", "supervisor.log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(state.dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in the terminal must not reach the lab's processes
                close_fds=True,
            )
        state.record("supervisor", pid=proc.pid)
        state.update_info(supervisor_pid=proc.pid)

    def _load_processes(self, state: LabState) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                control.request(state.control_socket, {"cmd": "load"}, timeout=5)
                return
            except LabStateError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the lab's supervisor did not start; see {state.path('logs', 'supervisor.log')}"
                    ) from None
                time.sleep(0.01)

    def _wait_ready(self, lab: LabSpec) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending: list[str] = []
        while time.monotonic() < deadline:
            try:
                procs = control.request(lab.state.control_socket, {"cmd": "status"}, timeout=2)["processes"]
            except LabStateError:
                time.sleep(0.03)
                continue
            pending = [p["name"] for p in procs if not p["ready"]]
            if not pending:
                return
            crashing = [p for p in procs if not p["ready"] and p["restarts"] >= 2]
            if crashing:
                raise LabError(f"{crashing[0]['name']} keeps exiting: {_last_log_line(lab, crashing[0]['name'])}")
            time.sleep(0.03)
        logs = lab.state.path("logs")
        raise LabError(
            f"processes not ready after {READY_TIMEOUT:g}s: {', '.join(pending) or 'supervisor'}; see logs in {logs}"
        )

    # --- running lab ---

    def hosts(self, lab: LabSpec) -> dict[str, Host]:
        # Namespaces are named after the plan, so the hosts never change while the lab is up.
        if self._hosts is None or self._hosts[0] != lab.name:
            self._hosts = (lab.name, netns_hosts(lab))
        return self._hosts[1]

    def processes(self, lab: LabSpec) -> list[dict[str, Any]]:
        return control.request(lab.state.control_socket, {"cmd": "status"})["processes"]

    def elb_stats_socket(self, lab: LabSpec, elb: str) -> Path:
        return haproxy_paths(lab.state, elb).stats_socket

    def control_pod(self, lab: LabSpec, pod: str, action: str, overrides: dict[str, Any] | None = None) -> None:
        req: dict[str, Any] = {"cmd": action, "name": f"pod/{pod}"}
        if overrides is not None:
            req["overrides"] = overrides
        control.request(lab.state.control_socket, req)
        if action in ("start", "restart") and not self._ready_within(lab, f"pod/{pod}", READY_TIMEOUT):
            raise LabError(f"pod {pod} did not become ready")

    def _ready_within(self, lab: LabSpec, process: str, timeout: float) -> bool:
        """Wait until the supervisor reports `process` (e.g. pod/accounts-0) ready; False if it is not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            procs = {p["name"]: p for p in self.processes(lab)}
            if procs[process]["ready"]:
                return True
            time.sleep(0.01)
        return False

    def sync_kube_proxy(
        self, lab: LabSpec, nodes: list[str], endpoints: dict | None = None, topology: Any = None
    ) -> None:
        topo = topology if topology is not None else lab.topology
        hosts = self.hosts(lab)

        def sync(node: str) -> None:
            rules = render_node(topo, lab.plan, node, endpoints)
            saved = hosts[node].run(["iptables-save", "-t", "nat"]).stdout
            # One restore: the chains commit first, then the now unreferenced chains are deleted.
            hosts[node].run(["iptables-restore", "--noflush"], input=rules.chains + stale_chains(saved, rules))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(sync, nodes))

    def elb_config(self, lab: LabSpec, elb: str) -> str:
        return lab.state.path("run", f"{elb}.haproxy.cfg").read_text()

    def elb_checker_config(self, lab: LabSpec, elb: str) -> str:
        return checker_config_path(lab.state, elb).read_text()

    def set_elb_checker_config(self, lab: LabSpec, elb: str, text: str) -> None:
        _replace(checker_config_path(lab.state, elb), text)  # the checker reloads it when it changes
        if not elbcheck.wait_for_config(str(self.elb_checker_socket(lab, elb)), text, READY_TIMEOUT):
            raise LabError(f"the health checker of ELB node {elb} did not take its new config; "
                           f"{_last_log_line(lab, f'check/{elb}')}")  # fmt: skip

    def elb_checker_socket(self, lab: LabSpec, elb: str) -> Path:
        return checker_socket_path(lab.state, elb)

    def set_elb_config(self, lab: LabSpec, elb: str, text: str) -> None:
        _replace(lab.state.path("run", f"{elb}.haproxy.cfg"), text)
        control.request(lab.state.control_socket, {"cmd": "restart", "name": f"elb/{elb}"})
        if self._ready_within(lab, f"elb/{elb}", READY_TIMEOUT):
            return
        raise LabError(
            f"ELB node {elb} did not come back after its configuration changed; {_last_log_line(lab, f'elb/{elb}')}"
        )

    # --- teardown ---

    def destroy(self, state: LabState) -> list[str]:
        removed: list[str] = []
        _stop_supervisor(state)
        names = set()
        for entry in state.recorded("netns"):
            names.update(entry.get("names", []))
        names.update(_tagged_namespaces().get(state.name, []))
        present = [n for n in sorted(names) if (NETNS_DIR / n).exists()]
        _kill_processes_in([str(NETNS_DIR / n) for n in present])
        for name in present:
            try:
                delete_netns(NETNS_DIR / name)
                removed.append(name)
            except OSError as exc:
                raise LabError(f"cannot remove namespace {name}: {exc.strerror}") from None
        if state.dir.exists():
            shutil.rmtree(state.dir, ignore_errors=True)
        return removed

    def orphans(self) -> list[str]:
        return sorted(lab for lab in _tagged_namespaces() if not LabState(lab).exists())


def _replace(path: Path, text: str) -> None:
    """Write a file in one step: a reader sees the old text or the new, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _last_log_line(lab: LabSpec, process: str) -> str:
    spec = next((p for p in process_specs(lab) if p["name"] == process), None)
    if spec is None:
        return "no log"
    path = lab.state.path(spec["log"])
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return f"no log at {path}"
    alerts = [ln for ln in lines if "ALERT" in ln or "Error" in ln] or lines
    return (alerts[-1].strip() if alerts else "empty log") + f" (log: {path})"


def process_specs(lab: LabSpec) -> list[dict[str, Any]]:
    """What the supervisor runs: one HAProxy and one health checker per ELB node, one Thrift server per pod."""
    state, plan, topo = lab.state, lab.plan, lab.topology
    specs: list[dict[str, Any]] = []
    for elb in topo.elb_nodes:
        paths = haproxy_paths(state, elb.name)
        specs.append(
            {
                "name": f"elb/{elb.name}",
                "netns": str(NETNS_DIR / netns_name(lab.name, elb.name)),
                "argv": ["haproxy", "-db", "-f", str(state.path("run", f"{elb.name}.haproxy.cfg"))],
                "log": f"logs/{elb.name}.haproxy.log",
                "ready_socket": str(paths.stats_socket),
            }
        )
        specs.append(
            {
                "name": f"check/{elb.name}",
                "netns": str(NETNS_DIR / netns_name(lab.name, elb.name)),
                # A stdlib-only file run with -S: no site-packages to import, it starts in milliseconds.
                "argv": [sys.executable, "-S", elbcheck.__file__, str(checker_config_path(state, elb.name)),
                         "--socket", str(checker_socket_path(state, elb.name))],
                "log": f"logs/{elb.name}.checks.log",
                "ready_socket": str(checker_socket_path(state, elb.name)),
            }
        )  # fmt: skip
    for pod in topo.pods:
        svc = topo.service(pod.service)
        specs.append(
            {
                "name": f"pod/{pod.name}",
                "netns": str(NETNS_DIR / netns_name(lab.name, pod.name)),
                "log": f"logs/{pod.name}.log",
                "pod": {
                    "service": svc.name,
                    "pod": pod.name,
                    "node": pod.node,
                    "az": topo.node(pod.node).az,
                    "ip": str(plan.ip(pod.name)),
                    "port": svc.port,
                    "backlog": svc.backlog,
                    "accept_delay": 0.0,
                },
            }
        )
    return specs


def netns_hosts(lab: LabSpec) -> dict[str, Host]:
    """Every host of the lab: one network namespace each, named after the plan."""
    return {
        h.name: Host(
            name=h.name,
            role=h.role,
            netns=str(NETNS_DIR / netns_name(lab.name, h.name)),
            az=h.az,
            ip=str(h.ip) if h.ip else None,
            node=h.node,
            service=h.service,
        )
        for h in lab.plan.hosts
    }


def apply_kube_proxy(lab: LabSpec, nodes: list[str], first: bool = False, endpoints: dict | None = None) -> None:
    """(Re)sync kube-proxy's chains on nodes, as kube-proxy does: iptables-restore --noflush."""
    hosts = netns_hosts(lab)

    def apply(node: str) -> None:
        rules = render_node(lab.topology, lab.plan, node, endpoints)
        lab.state.path("run", f"{node}.iptables").write_text(rules.text())
        # One iptables-restore per node: the jump block commits first, then the chains block.
        hosts[node].run(["iptables-restore", "--noflush"], input=(rules.jumps if first else "") + rules.chains)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(apply, nodes))


def _wire(lab: LabSpec, paths: dict[str, str]) -> None:
    """Bridges, veth pairs, addresses and routes of the plan, with as few netlink round trips as we can."""
    plan = lab.plan
    iprs: dict[str, IPRoute] = {}
    indexes: dict[str, dict[str, int]] = {}

    def ipr(host: str) -> IPRoute:
        if host not in iprs:
            iprs[host] = netns_iproute(paths[host])
        return iprs[host]

    def index(host: str, ifname: str) -> int:
        if ifname not in indexes.setdefault(host, {}):
            indexes[host] = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr(host).get_links()}
        if ifname not in indexes[host]:
            raise LabError(f"{host}: interface {ifname} did not appear")
        return indexes[host][ifname]

    def add_address(host: str, ifname: str, address) -> None:
        ipr(host).addr("add", index=index(host, ifname), address=str(address.ip), prefixlen=address.network.prefixlen)

    try:
        for host in paths:
            ipr(host).link("set", ifname="lo", ifalias=f"{TAG_PREFIX}{lab.name}", state="up")
        for br in plan.bridges:
            ipr(br.host).link("add", ifname=br.name, kind="bridge", state="up")
            if br.address:
                add_address(br.host, br.name, br.address)
        for link in plan.links:
            # Created in namespace a (enslaved and up in the same request), its peer placed straight into b.
            extra = {"master": index(link.a.host, link.a.bridge)} if link.a.bridge else {}
            ipr(link.a.host).link(
                "add",
                ifname=link.a.ifname,
                kind="veth",
                ifalias=link.b.host,
                state="up",
                peer={"ifname": link.b.ifname, "net_ns_fd": paths[link.b.host]},
                **extra,
            )
            if link.a.address:
                add_address(link.a.host, link.a.ifname, link.a.address)
        for link in plan.links:
            end = link.b
            if end.bridge:
                ipr(end.host).link("set", index=index(end.host, end.ifname), master=index(end.host, end.bridge))
            if end.address:
                add_address(end.host, end.ifname, end.address)
            ipr(end.host).link("set", index=index(end.host, end.ifname), state="up")
        for route in plan.routes:
            ipr(route.host).route("add", dst=str(route.dst), gateway=str(route.via))
    finally:
        for conn in iprs.values():
            conn.close()


def check_host_routes(lab: LabSpec) -> None:
    """The lab's CIDRs must not overlap the host's routes (read only), or captures and traces would mislead."""
    with IPRoute() as ipr:
        routes = ipr.get_routes(family=2, table=254)
    host_nets = []
    for r in routes:
        dst = r.get_attr("RTA_DST")
        if dst is None or r["dst_len"] == 0:
            continue  # the default route overlaps everything by definition
        host_nets.append(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False))
    for field, cidr in all_cidrs(lab.topology).items():
        for net in host_nets:
            if cidr.overlaps(net):
                raise InputError(
                    f"{lab.source or 'topology'}: {field} {cidr} overlaps this host's route {net}; "
                    f"choose another CIDR (e.g. --set {field}=...)"
                )


def _tagged_namespaces() -> dict[str, list[str]]:
    """Namespaces named lab.<lab>.<host> whose loopback carries the lab's tag: lab -> names."""
    out: dict[str, list[str]] = {}
    if not NETNS_DIR.is_dir():
        return out
    for entry in sorted(NETNS_DIR.iterdir()):
        parsed = split_netns_name(entry.name)
        if not parsed:
            continue
        try:
            with netns_iproute(str(entry)) as ipr:
                lo = ipr.get_links(ifname="lo")
            alias = lo[0].get_attr("IFLA_IFALIAS") if lo else None
        except Exception:
            continue
        if alias == f"{TAG_PREFIX}{parsed[0]}":
            out.setdefault(parsed[0], []).append(entry.name)
    return out


def _stop_supervisor(state: LabState) -> None:
    pids = {e["pid"] for e in state.recorded("supervisor") if "pid" in e}
    info = state.read_info() or {}
    if info.get("supervisor_pid"):
        pids.add(info["supervisor_pid"])
    if state.control_socket.exists():
        with contextlib.suppress(LabError):
            control.request(state.control_socket, {"cmd": "shutdown"}, timeout=3)
    deadline = time.monotonic() + 4.0
    for pid in pids:
        while _is_supervisor(pid, state) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _is_supervisor(pid, state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _is_supervisor(pid: int, state: LabState) -> bool:
    """True only for a live supervisor of this lab (a recycled pid must not be killed)."""
    cmdline = process_cmdline(pid)
    if not cmdline:
        return False
    if is_zombie(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child (lab up in this process): reap it
        return False
    return SUPERVISOR_MODULE in cmdline and str(state.dir) in cmdline


def _kill_processes_in(paths: list[str]) -> None:
    for _ in range(50):
        pids = [pid for found in pids_in_netns(paths).values() for pid in found]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    raise LabError(f"processes in the lab's namespaces would not die: {pids}")


__all__ = ["NetnsBackend", "NETNS_PREFIX", "apply_kube_proxy", "process_specs"]
