"""A lab as the commands above the backends see it: its topology, address plan, hosts and state."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from lab.errors import InputError, LabStateError
from lab.hosts import Host
from lab.models.topology import Topology
from lab.render.plan import NetworkPlan, build_plan
from lab.state import LabState, all_labs, check_lab_name

if TYPE_CHECKING:
    from lab.backends.base import Backend


@dataclass
class Lab:
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

    @cached_property
    def backend(self) -> Backend:
        from lab.backends import get_backend

        return get_backend(self.backend_name)

    @cached_property
    def hosts(self) -> dict[str, Host]:
        return self.backend.hosts(self)

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise InputError(f"lab '{self.name}' has no host '{name}'; hosts: {', '.join(self.hosts)}") from None

    def hosts_by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == role]

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

    @classmethod
    def load(cls, name: str) -> Lab:
        """The lab `name` as recorded when it came up; errors when it is not up."""
        check_lab_name(name)
        state = LabState(name)
        info = state.read_info()
        if info is None:
            up = [s.name for s in all_labs() if (s.read_info() or {}).get("status") == "up"]
            hint = f"labs up: {', '.join(up)}" if up else "no lab is up; start one with `lab up`"
            raise LabStateError(f"lab '{name}' is not up ({hint})")
        status = info.get("status")
        if status != "up":
            raise LabStateError(f"lab '{name}' is {status}, not up; run `lab clean` then `lab up`")
        lab = cls(
            name=name,
            topology=Topology.model_validate(info["topology"]),
            backend_name=info.get("backend", "netns"),
            time_scale=float(info.get("time_scale", 1.0)),
            source=info.get("source", ""),
        )
        return lab


def default_lab_name() -> str:
    """The one lab that is up, else 'default'. Commands take --name to choose."""
    up = [s.name for s in all_labs() if (s.read_info() or {}).get("status") == "up"]
    if len(up) == 1:
        return up[0]
    return "default"
