"""haproxy.cfg for one ELB node: a Classic ELB's TCP listeners and its shared health check. Pure.

How the Classic ELB maps onto HAProxy:
- one `frontend` per ELB listener, bound on the ELB node's address; round robin to the instances'
  NodePort for that listener's service (`backend <service>`);
- ONE health check per instance per ELB node, shared by every listener (backend `elb-health`,
  whose servers the listener backends `track`): TCP connect to the health check port (by default
  the first listener's NodePort, as Kubernetes' AWS provider configures it). The lab's checker
  (lab/runtime/elbcheck.py) makes these checks at the ELB's fixed cadence; HAProxy only asks it each
  instance's state over loopback (`agent-check`), because HAProxy's own `check` starts the next check
  `inter` after the previous one ended (a timed-out check would repeat every interval + timeout);
- cross-zone off: an ELB node knows only the instances in its own AZ (it neither sends to nor
  checks the others);
- backend connection errors are retried on another instance (`retries` + `option redispatch`);
- the idle timeout applies to both sides (`timeout client` / `timeout server`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lab.models.topology import ElbNodeSpec, Topology
from lab.render.healthcheck import AGENT_PORT, agent_interval
from lab.render.plan import NetworkPlan

HEALTH_BACKEND = "elb-health"
PROMETHEUS_PORT = 8405  # bound on the ELB namespace's loopback only


@dataclass(frozen=True)
class HaproxyPaths:
    """Where the running HAProxy keeps its runtime files (inside the lab's state directory)."""

    stats_socket: Path
    pid_file: Path


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def render_haproxy(
    topo: Topology,
    plan: NetworkPlan,
    elb: ElbNodeSpec,
    paths: HaproxyPaths,
    time_scale: float = 1.0,
) -> str:
    """The configuration of one ELB node. `time_scale` < 1 shrinks the ELB's timers for quick runs."""
    cfg = topo.elb
    agent = agent_interval(topo, time_scale)
    targets = topo.elb_targets(elb)
    me = plan.ip(elb.name)
    scale = time_scale
    lines = [
        f"# ELB node {elb.name} ({elb.az}) of lab topology '{topo.name}'",
        f"# cross-zone load balancing: {'on' if cfg.cross_zone else 'off'}; "
        f"instances: {', '.join(n.name for n in targets) or 'none'}",
    ]
    if scale != 1.0:
        lines.append(
            f"# ELB timers scaled by {scale:g} (health check, idle timeout; not the backend connect timeout); "
            "the kernel's by the plan's sysctls"
        )
    lines += [
        "global",
        f"    stats socket {paths.stats_socket} mode 600 level admin",
        "    stats timeout 30s",
        f"    pidfile {paths.pid_file}",
        "    maxconn 8000",
        "    nbthread 1",
        "    log stdout format raw local0 info",
        "",
        "defaults",
        "    mode tcp",
        "    log global",
        "    option tcplog",
        "    option log-health-checks",
        # Not scaled: a backend connect races the kernel's SYN retransmits (1 s, 3 s), which cannot be; a
        # scaled 0.5 s would fail connects that succeed late at full scale, and shorten HAProxy's wait
        # before retrying a refused one, min(timeout connect, 1 s) (docs/scenarios.md, Time scale).
        f"    timeout connect {_ms(cfg.connect_timeout)}",
        f"    timeout client {_ms(cfg.idle_timeout * scale)}",
        f"    timeout server {_ms(cfg.idle_timeout * scale)}",
        f"    timeout queue {_ms(cfg.connect_timeout)}",
        f"    retries {cfg.retries}",
        "    option redispatch 1",
        "",
        "frontend prometheus",
        "    mode http",
        f"    bind 127.0.0.1:{PROMETHEUS_PORT}",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    http-request set-log-level silent",
        "",
        "# One TCP health check per instance, shared by all listeners (as the Classic ELB does). The lab's checker",
        "# makes it every interval (lab/runtime/elbcheck.py); HAProxy asks the checker over loopback, and only that.",
        f"backend {HEALTH_BACKEND}",
        f"    timeout connect {_ms(agent)}",
        f"    timeout check {_ms(agent)}",
        f"    default-server agent-check agent-addr 127.0.0.1 agent-port {AGENT_PORT} agent-inter {_ms(agent)}",
    ]
    port = topo.health_check_port
    for node in targets:
        # No `check`: HAProxy never connects to the instance for this server; the agent's word is its state.
        lines.append(f'    server {node.name} {plan.ip(node.name)}:{port} agent-send "{node.name}\\n"')
    for listener in cfg.listeners:
        svc = topo.service(listener.service)
        lines += [
            "",
            f"frontend listener-{listener.port}",
            f"    bind {me}:{listener.port}",
            f"    default_backend {svc.name}",
            "",
            f"backend {svc.name}",
            "    balance roundrobin",
        ]
        limit = ""
        if cfg.max_connections_per_instance:
            per_server_queue = max(1, cfg.surge_queue // max(1, len(targets)))
            limit = f" maxconn {cfg.max_connections_per_instance} maxqueue {per_server_queue}"
        for node in targets:
            lines.append(
                f"    server {node.name} {plan.ip(node.name)}:{svc.node_port} track {HEALTH_BACKEND}/{node.name}{limit}"
            )
    return "\n".join(lines) + "\n"
