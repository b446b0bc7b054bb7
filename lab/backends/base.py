"""The interface every backend implements: build a lab, hand out its hosts, run its pods, remove it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lab.hosts import Host

if TYPE_CHECKING:
    from lab.spec import LabSpec
    from lab.state import LabState

Progress = Callable[[str], None]


class Backend(Protocol):
    name: str

    def preflight(self, lab: LabSpec) -> None:
        """Raise EnvironmentProblem naming what is missing; create nothing."""

    def plan_text(self, lab: LabSpec) -> str:
        """Everything `up` would create and apply, as text (for --dry-run)."""

    def build(self, lab: LabSpec, progress: Progress) -> None:
        """Create the lab. Every resource is journaled in lab.state before it is created."""

    def hosts(self, lab: LabSpec) -> dict[str, Host]:
        """Every host of a built lab, by name."""

    def processes(self, lab: LabSpec) -> list[dict[str, Any]]:
        """The lab's long-running processes (ELB nodes, pods) and their state."""

    def elb_stats_socket(self, lab: LabSpec, elb: str) -> Path:
        """The unix stats socket of an ELB node's HAProxy, reachable from this machine."""

    def control_pod(self, lab: LabSpec, pod: str, action: str, overrides: dict[str, Any] | None = None) -> None:
        """stop | start | restart one pod's server (overrides: backlog, accept_delay)."""

    def sync_kube_proxy(
        self, lab: LabSpec, nodes: list[str], endpoints: dict | None = None, topology: Any = None
    ) -> None:
        """Re-sync kube-proxy's chains on nodes as kube-proxy would after a change (endpoints or Service
        spec: `topology` stands in for the API's view) and delete the per-service chains it no longer renders."""

    def elb_config(self, lab: LabSpec, elb: str) -> str:
        """The running configuration text of an ELB node's HAProxy."""

    def set_elb_config(self, lab: LabSpec, elb: str, text: str) -> None:
        """Replace an ELB node's HAProxy configuration and restart it; returns once it is ready."""

    def elb_checker_config(self, lab: LabSpec, elb: str) -> str:
        """The configuration text (JSON) of an ELB node's health checker (lab.render.healthcheck)."""

    def set_elb_checker_config(self, lab: LabSpec, elb: str, text: str) -> None:
        """Replace it; returns once the running checker checks what it says (each instance keeps its state and
        its place in the cadence)."""

    def elb_checker_socket(self, lab: LabSpec, elb: str) -> Path:
        """The unix socket where an ELB node's health checker tells its view (lab.runtime.elbcheck.read_status)."""

    def destroy(self, state: LabState) -> list[str]:
        """Remove everything the journal (and the lab's tagged namespaces) say exists; say what went."""

    def orphans(self) -> list[str]:
        """Lab names whose resources exist without a state directory (for `lab clean`)."""
