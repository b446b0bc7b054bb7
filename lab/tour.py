"""The demo's tour of the path: a lab up, one RPC through every ELB listener and ELB node, its status, down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import lifecycle, rpc


def tour(topology: Path, name: str, progress: Callable[[str], None] = lambda _msg: None) -> dict[str, Any]:
    """Bring the lab `name` up from `topology`, call whoami through each (listener, ELB node) pair, read its
    status, and take it down again whatever happened (the lab never outlives the tour)."""
    lab = lifecycle.prepare(topology, name)
    up = lifecycle.up(lab, progress)
    try:
        calls = []
        for listener in lab.topology.elb.listeners:
            for elb in lab.topology.elb_nodes:
                progress(f"whoami through :{listener.port} on {elb.name}")
                target = rpc.resolve(lab, listener.service, "elb", elb.name)
                call = rpc.call(lab, listener.service, "whoami", [], target)
                calls.append({"listener": listener.port, "elb_node": elb.name, **call})
        progress("reading the lab's status")
        status = lifecycle.status(lab.name)
    finally:
        progress("taking the lab down")
        down = lifecycle.down(lab.name)
    return {"name": lab.name, "up": up, "calls": calls, "status": status, "down": down}
