"""A lab as the layers above the backends see it: the declared lab (lab.spec) with its backend and its hosts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from lab.backends import get_backend
from lab.backends.base import Backend
from lab.errors import InputError, LabStateError
from lab.hosts import Host
from lab.models.topology import Topology
from lab.spec import LabSpec
from lab.state import LabState, all_labs, check_lab_name


@dataclass
class Lab(LabSpec):
    """The runtime handle: what a LabSpec declares, reached through its backend. The backend owns the hosts (and
    knows when they change, e.g. a kind pod's new sandbox); the handle only asks it."""

    @cached_property
    def backend(self) -> Backend:
        return get_backend(self.backend_name)

    @property
    def hosts(self) -> dict[str, Host]:
        return self.backend.hosts(self)

    def host(self, name: str) -> Host:
        hosts = self.hosts
        try:
            return hosts[name]
        except KeyError:
            raise InputError(f"lab '{self.name}' has no host '{name}'; hosts: {', '.join(hosts)}") from None

    def hosts_by_role(self, role: str) -> list[Host]:
        return [h for h in self.hosts.values() if h.role == role]

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
        return cls(
            name=name,
            topology=Topology.model_validate(info["topology"]),
            backend_name=info.get("backend", "netns"),
            time_scale=float(info.get("time_scale", 1.0)),
            source=info.get("source", ""),
        )


LAB_NAME_ENV = "LAB_NAME"
DEFAULT_LAB_NAME = "default"


def env_lab_name() -> str | None:
    """$LAB_NAME, checked, or None when it is unset or empty."""
    name = os.environ.get(LAB_NAME_ENV, "").strip()
    if not name:
        return None
    try:
        return check_lab_name(name)
    except InputError as exc:
        raise InputError(f"${LAB_NAME_ENV}: {exc}") from None


def default_lab_name() -> str:
    """The lab a command acts on without --name: $LAB_NAME if set, else 'default'.

    Never "the lab that is up": with a test suite's lab up, a bare `lab down` must not destroy it.
    """
    return env_lab_name() or DEFAULT_LAB_NAME
