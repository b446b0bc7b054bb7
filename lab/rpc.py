"""One Thrift RPC through the lab, from a lab host: via the ELB, straight to a node's NodePort, or to a pod."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from lab.errors import InputError, LabError
from lab.hosts import Host
from lab.lab import Lab

VIAS = ("elb", "node", "pod")


@dataclass(frozen=True)
class Target:
    """Where a connection goes, and from which host it starts."""

    source: Host
    ip: str
    port: int
    via: str
    hop: str  # the ELB node, node or pod addressed

    def describe(self) -> str:
        return f"{self.source.name} -> {self.hop} ({self.ip}:{self.port}) via {self.via}"


def resolve(lab: Lab, service: str, via: str = "elb", target: str | None = None, source: str | None = None) -> Target:
    topo = lab.topology
    try:
        svc = topo.service(service)
    except KeyError:
        raise InputError(f"unknown service '{service}'; services: {', '.join(s.name for s in topo.services)}") from None
    if via not in VIAS:
        raise InputError(f"--via {via!r}: choose one of {', '.join(VIAS)}")
    clients = lab.hosts_by_role("client")
    if via == "elb":
        listener = next((lst for lst in topo.elb.listeners if lst.service == service), None)
        if listener is None:
            raise InputError(f"service '{service}' has no ELB listener; use --via node or --via pod")
        choices = [e.name for e in topo.elb_nodes]
        hop = _pick(target, choices, "ELB node")  # DNS round robin over the ELB nodes' addresses
        port = listener.port
        src = source or clients[0].name
    elif via == "node":
        choices = [n.name for n in topo.k8s_nodes]
        hop = _pick(target, choices, "node")
        port = svc.node_port
        src = source or clients[0].name
    else:
        choices = [p.name for p in topo.pods_of(service)]
        if not choices:
            raise InputError(f"service '{service}' has no pods")
        hop = _pick(target, choices, "pod")
        port = svc.port
        # Pod IPs are not routed into the client VPC (VPC peering carries VPC CIDRs only): call from the pod's node.
        src = source or topo.pods[[p.name for p in topo.pods].index(hop)].node
    # The backend's view of the address (kind's network plugin picks pod IPs; the netns plan is exact).
    return Target(source=lab.host(src), ip=str(lab.host(hop).ip or lab.plan.ip(hop)), port=port, via=via, hop=hop)


def _pick(target: str | None, choices: list[str], what: str) -> str:
    if target is None:
        return random.choice(choices)
    if target not in choices:
        article = "an" if what[0] in "AEIOU" else "a"
        raise InputError(f"--target {target!r} is not {article} {what} here; choose one of: {', '.join(choices)}")
    return target


def _thrift_error(exc: Exception) -> str:
    """thriftpy2's transport errors in plain words (they print as TTransportException(type=4, ...))."""
    message = getattr(exc, "message", None) or str(exc)
    if "read 0 bytes" in message:
        return "the connection was closed by the other side before the reply (TSocket read 0 bytes)"
    return message


def call(lab: Lab, service: str, method: str, args: list[str], target: Target, timeout: float = 5.0) -> dict[str, Any]:
    """Connect from the target's source host, make one RPC, report timings and the result."""
    from labservices.client import call as thrift_call
    from labservices.client import client_on_socket

    try:
        sock, connect_s = target.source.timed_connect((target.ip, target.port), timeout=timeout)
    except OSError as exc:
        raise LabError(f"connect {target.describe()} failed: {exc.strerror or exc}") from None
    t1 = time.perf_counter()
    try:
        client = client_on_socket(sock, timeout=timeout)
        try:
            result = thrift_call(client, method, args)
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"{method} {' '.join(args)}: {exc}") from None
        except OSError as exc:
            raise LabError(f"{method} over {target.describe()} failed: {exc.strerror or exc}") from None
        except Exception as exc:  # thriftpy2 transport errors carry no errno
            raise LabError(f"{method} over {target.describe()} failed: {_thrift_error(exc)}") from None
    finally:
        sock.close()
    t2 = time.perf_counter()
    return {
        "service": service,
        "method": method,
        "via": target.via,
        "from": target.source.name,
        "to": target.hop,
        "address": f"{target.ip}:{target.port}",
        "connect_ms": round(connect_s * 1000, 3),
        "rpc_ms": round((t2 - t1) * 1000, 3),
        "result": result,
    }
