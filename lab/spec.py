"""The declared lab: a name, a validated topology and its address plan, the timers' scale, where its state lives.

Everything here is known before anything runs; backends build what a LabSpec declares. The runtime handle
with hosts and a backend is lab.lab.Lab, one layer up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.models.topology import Topology
from lab.models.yamlio import load_model
from lab.render.plan import NetworkPlan, build_plan
from lab.state import LabState

DEFAULT_TOPOLOGY = Path("topologies/default.yaml")


def default_topology_path() -> Path:
    """topologies/default.yaml: in the current directory if there, else the one beside this package."""
    if DEFAULT_TOPOLOGY.exists():
        return DEFAULT_TOPOLOGY
    return Path(__file__).resolve().parents[1] / DEFAULT_TOPOLOGY


def load_topology(path: Path, overrides: list[str] | None = None) -> Topology:
    """A topology file with `--set` overrides, validated, whose address plan can be built (capacity checked now,
    not halfway through `lab up`)."""
    topo = load_model(Topology, path, overrides)
    try:
        build_plan(topo)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return topo


@dataclass
class LabSpec:
    name: str
    topology: Topology
    backend_name: str = "netns"
    time_scale: float = 1.0
    source: str = ""  # the topology file it came from

    @cached_property
    def state(self) -> LabState:
        return LabState(self.name)

    @cached_property
    def plan(self) -> NetworkPlan:
        return build_plan(self.topology, self.time_scale)

    @property
    def info(self) -> dict[str, Any]:
        return self.state.read_info() or {}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend_name,
            "time_scale": self.time_scale,
            "source": self.source,
            "topology": self.topology.model_dump(mode="json"),
        }
