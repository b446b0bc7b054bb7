"""Bring labs up and down, report their status, clean leftovers. Rolls back on any failure."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab.backends import get_backend
from lab.backends.base import Progress
from lab.errors import InputError, LabError, LabStateError
from lab.haproxy_stats import instance_health, show_stat
from lab.lab import Lab, default_lab_name, env_lab_name
from lab.models.topology import Topology
from lab.spec import default_topology_path, load_topology
from lab.state import LabState, all_labs, check_lab_name


class Interrupted(LabError):
    """SIGTERM/SIGHUP during a command: handled like Ctrl-C (roll back, then exit)."""


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    me = os.getpid()

    def raise_interrupt(signum: int, _frame: Any) -> None:
        if os.getpid() != me:  # a forked helper (a library's child) must never run our rollback
            os._exit(128 + signum)
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def prepare(
    topology: Path,
    name: str | None = None,
    overrides: list[str] | None = None,
    backend: str = "netns",
    time_scale: float = 1.0,
) -> Lab:
    if not 0 < time_scale <= 1:
        raise InputError(f"--time-scale {time_scale:g}: must be > 0 and <= 1 (1 = real ELB timers)")
    topo = load_topology(topology, overrides)
    lab_name = check_lab_name(name or topo.name)
    get_backend(backend)  # unknown backend: fail before anything else
    return Lab(name=lab_name, topology=topo, backend_name=backend, time_scale=time_scale, source=str(topology))


def topology_of(path: Path | None, overrides: list[str], lab_name: str | None) -> tuple[Topology, float]:
    """(topology, ELB timer scale) a read-only command looks at: the file `path` (with --set overrides), else
    the lab named by `lab_name` or $LAB_NAME, else the default lab when it is up, else topologies/default.yaml."""
    if path is not None:
        return load_topology(path, overrides), 1.0
    if overrides:
        raise InputError("--set needs -t FILE (a running lab's topology is fixed)")
    named = lab_name or env_lab_name()
    try:
        lab = Lab.load(named or default_lab_name())
    except LabStateError:
        if named:
            raise
        return load_topology(default_topology_path()), 1.0
    return lab.topology, lab.time_scale


def dry_run(lab: Lab) -> dict[str, Any]:
    """What `up` would create and apply, for machines: the lab's description and the backend's plan, one
    entry per section of its text (namespaces, network, rules per node, haproxy.cfg per ELB node, ...)."""
    sections: list[dict[str, Any]] = []
    for line in lab.backend.plan_text(lab).splitlines():
        if line.startswith("## "):  # the backends' plan text heads each section so
            sections.append({"title": line[3:], "lines": []})
        elif sections:
            sections[-1]["lines"].append(line)
    plan = [{"title": s["title"], "text": "\n".join(s["lines"]).strip("\n") + "\n"} for s in sections]
    return {**lab.describe(), "dry_run": True, "plan": plan}


def up(lab: Lab, progress: Progress = lambda _msg: None) -> dict[str, Any]:
    """Create the lab; on any failure or interrupt remove everything created so far, then re-raise."""
    backend = lab.backend
    backend.preflight(lab)
    state = lab.state
    if state.exists():
        status = (state.read_info() or {}).get("status", "unknown")
        if status == "up":
            raise LabStateError(
                f"lab '{lab.name}' is already up; `lab down --name {lab.name}` first, or choose another --name"
            )
        raise LabStateError(f"leftovers of lab '{lab.name}' exist (status: {status}); run `lab clean` first")
    if lab.name in backend.orphans():
        raise LabStateError(f"leftover namespaces of lab '{lab.name}' exist; run `lab clean` first")
    started = time.monotonic()
    state.create_dir()
    state.write_info({**lab.describe(), "status": "creating", "created_at": time.time(), "cli_pid": os.getpid()})
    try:
        with signals_as_interrupts():
            backend.build(lab, progress)
            state.update_info(status="up", up_at=time.time(), up_seconds=round(time.monotonic() - started, 3))
    except BaseException:
        progress("rolling back")
        with contextlib.suppress(Exception):
            backend.destroy(state)
        raise
    return {"name": lab.name, "seconds": round(time.monotonic() - started, 3), "hosts": len(lab.plan.hosts)}


def down(name: str) -> dict[str, Any]:
    """Remove a lab (idempotent: a lab that is not up is reported, not an error)."""
    check_lab_name(name)
    state = LabState(name)
    info = state.read_info() or {}
    backend = get_backend(info.get("backend", "netns"))
    if not state.exists() and name not in backend.orphans():
        return {"name": name, "removed": [], "was_up": False}
    started = time.monotonic()
    with signals_as_interrupts():
        _end_faults(state)
        removed = backend.destroy(state)
    return {"name": name, "removed": removed, "was_up": True, "seconds": round(time.monotonic() - started, 3)}


def _end_faults(state: LabState) -> None:
    """The lab's faults end with it: stop their reverters (the rest goes with the namespaces)."""
    from lab.faults import teardown  # imported at use for start-up speed

    with contextlib.suppress(OSError, LabError, ValueError):
        teardown(state)


def clean(only: list[str] | None = None) -> list[dict[str, Any]]:
    """Remove every lab (or only the named ones): those with state (up, crashed, half-built) and tagged
    leftovers without state."""
    for name in only or []:
        check_lab_name(name)
    results = []
    names = {s.name: (s.read_info() or {}).get("backend", "netns") for s in all_labs()}
    # Every backend is asked for leftovers: after a reboot (/run is tmpfs) no state names them.
    for backend_name in {"netns", "kind", *names.values()}:
        try:
            for orphan in get_backend(backend_name).orphans():
                names.setdefault(orphan, backend_name)
        except LabError:
            continue
    for name, backend_name in sorted(names.items()):
        if only is not None and name not in only:
            continue
        _end_faults(LabState(name))
        removed = get_backend(backend_name).destroy(LabState(name))
        results.append({"name": name, "backend": backend_name, "removed": removed})
    return results


def status(name: str) -> dict[str, Any]:
    lab = Lab.load(name)
    hosts = lab.hosts
    out: dict[str, Any] = {
        "name": lab.name,
        "backend": lab.backend_name,
        "status": lab.info.get("status"),
        "source": lab.source,
        "time_scale": lab.time_scale,
        "kube_proxy": lab.topology.kube_proxy.flavour,
        "cross_zone": lab.topology.elb.cross_zone,
        "hosts": [
            {"name": h.name, "role": h.role, "az": h.az, "ip": h.ip, "node": h.node, "present": h.exists()}
            for h in hosts.values()
        ],
    }
    try:
        out["processes"] = lab.backend.processes(lab)
    except LabError as exc:
        out["processes"] = []
        out["problem"] = str(exc)
    out["elb"] = elb_view(lab)
    from lab import faults  # imported at use for start-up speed (faults sit below lifecycle)

    out["faults"] = faults.status(lab, active_only=True)
    return out


def elb_view(lab: Lab) -> list[dict[str, Any]]:
    """Each ELB node's view of each instance (InService / OutOfService), as the ELB console shows it."""
    view = []
    for elb in lab.topology.elb_nodes:
        entry: dict[str, Any] = {"elb_node": elb.name, "az": elb.az, "instances": {}}
        try:
            entry["instances"] = instance_health(show_stat(lab.backend.elb_stats_socket(lab, elb.name)))
        except LabError as exc:
            entry["error"] = str(exc)
        view.append(entry)
    return view
