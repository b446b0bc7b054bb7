"""`lab trace`: one real connection through a running lab, reconstructed hop by hop from independent evidence.

A pipeline: gather the evidence (lab.teach.evidence: every read of the lab, once) -> build the hops from it
(lab.teach.hops: pure, one builder per hop) -> views (lab.teach.views, lab.teach.diagram). A recorded
evidence file (`lab trace --save-evidence`) can be told again without the lab (`lab trace --evidence FILE`).
"""

from __future__ import annotations

import json
from pathlib import Path

from lab import rpc
from lab.errors import InputError
from lab.lab import Lab
from lab.teach.evidence import gather
from lab.teach.hops import assemble
from lab.teach.tracedata import Evidence, TraceResult

TRACE_VIAS = ("elb", "node")  # a pod is reached through one of them


def resolve_target(
    lab: Lab, service: str, via: str = "elb", source: str | None = None, target: str | None = None
) -> rpc.Target:
    """Check the arguments and pick the ELB node / node (at random when not given), as `lab call` does."""
    if via not in TRACE_VIAS:
        raise InputError(f"--via {via!r}: choose one of {', '.join(TRACE_VIAS)} (a pod is reached through one of them)")
    return rpc.resolve(lab, service, via, target, source)


def trace_evidence(
    lab: Lab,
    service: str,
    via: str = "elb",
    source: str | None = None,
    target: str | None = None,
    timeout: float = 5.0,
) -> Evidence:
    """Send one connection (a whoami RPC) and record what it left behind."""
    return gather(lab, service, resolve_target(lab, service, via, source, target), timeout)


def trace(
    lab: Lab,
    service: str,
    via: str = "elb",
    source: str | None = None,
    target: str | None = None,
    timeout: float = 5.0,
) -> TraceResult:
    """Send one connection (a whoami RPC) and reconstruct every hop it took."""
    return assemble(trace_evidence(lab, service, via, source, target, timeout))


def save_evidence(evidence: Evidence, path: Path) -> None:
    path.write_text(json.dumps(evidence.to_json(), indent=1) + "\n")


def load_evidence(path: Path) -> Evidence:
    """A recorded trace (from `lab trace --save-evidence`), checked enough to tell it again."""
    try:
        data = json.loads(path.read_text())
        return Evidence.from_json(data)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise InputError(f"{path}: not a trace evidence file written by `lab trace --save-evidence` ({exc})") from None
