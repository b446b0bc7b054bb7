"""Load and fully validate a scenario before anything runs: schema, topology per variant, fault kinds, metrics."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import InputError, LabError
from lab.faults.kinds import get_kind
from lab.faults.model import parse_params
from lab.hosts import NamespaceGone
from lab.lab import Lab
from lab.models.scenario import Scenario
from lab.models.topology import Topology
from lab.models.yamlio import apply_overrides, line_of, read_yaml, to_plain, validate_data
from lab.scenarios.metrics import CATALOG, describe_unknown
from lab.spec import load_topology

SCENARIO_KEY = "phases."  # a sweep key starting so edits the scenario (workload, fault params), not the topology
REPO = Path(__file__).resolve().parents[2]
SCENARIO_DIR = REPO / "scenarios"
TOPOLOGY_DIR = REPO / "topologies"


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    path: Path
    topology_path: Path
    point: tuple[str, ...] = ()  # the sweep point this copy runs (KEY=VALUE), () without a sweep
    extra: tuple[str, ...] = ()  # the matrix's --set combination it was loaded with

    @property
    def label(self) -> str:
        """`[elb.nodes_per_az=6,nodes_per_az=3]` for a sweep point, '' otherwise."""
        return f"[{','.join(self.point)}]" if self.point else ""

    def topology_point(self) -> list[str]:
        """The sweep point's topology overrides (its phases.* keys changed the scenario itself)."""
        return [p for p in self.point if not p.startswith(SCENARIO_KEY)]

    @property
    def id(self) -> str:
        return self.path.stem

    def overrides(self, variant: str, quick: bool, extra: list[str] | None = None) -> list[str]:
        out = list(self.scenario.topology.set) + list(self.scenario.variants.get(variant, []))
        if quick and self.scenario.quick:
            out += self.scenario.quick.set
        return out + list(extra or []) + self.topology_point()

    def topology(self, variant: str, quick: bool = False, extra: list[str] | None = None) -> Topology:
        return load_topology(self.topology_path, self.overrides(variant, quick, extra))


def builtin() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def resolve_path(name: str) -> Path:
    """A scenario file, or a built-in scenario's name (e.g. `baseline`)."""
    path = Path(name)
    if path.exists():
        return path
    candidate = SCENARIO_DIR / f"{name}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(p.stem for p in builtin())
    raise InputError(f"{name}: no such scenario file or built-in scenario (built-in: {known})")


def load_scenario(name: str | Path, extra: list[str] | None = None) -> LoadedScenario:
    path = resolve_path(str(name))
    data = read_yaml(path)
    scenario = validate_data(Scenario, data, str(path))
    topo_path = _topology_path(path, scenario.topology.file, data)
    loaded = LoadedScenario(scenario, path, topo_path)
    _check_references(loaded, data, extra or [])
    return loaded


def expand_sweep(
    name: str | Path, extra: list[str] | None = None, sweep: dict[str, list[Any]] | None = None
) -> list[LoadedScenario]:
    """One validated LoadedScenario per point of the scenario's sweep (or of `sweep`, which replaces it).

    A `phases.<phase>...` key is applied to the scenario document (phases picked by name, faults by index),
    any other key is a topology override like `--set`; every point is checked before anything runs.
    """
    path = resolve_path(str(name))
    data = read_yaml(path)
    base = validate_data(Scenario, data, str(path))
    if sweep is not None:
        base = validate_data(Scenario, {**to_plain(data), "sweep": sweep}, f"{path} (sweep)")
    out = []
    for point in base.sweep_points():
        edits = [p for p in point if p.startswith(SCENARIO_KEY)]
        scenario = base
        if edits:
            try:
                doc, _where_set = apply_overrides(copy.deepcopy(to_plain(data)), edits, str(path))
                doc["sweep"] = {}
                scenario = validate_data(Scenario, doc, f"sweep point {','.join(point)}")
            except InputError as exc:
                raise InputError(f"{_where(path, data, ('sweep',))}: {exc}") from None
        topo_path = _topology_path(path, scenario.topology.file, data)
        loaded = LoadedScenario(scenario, path, topo_path, tuple(point), tuple(extra or []))
        try:
            _check_references(loaded, data, extra or [])
        except InputError as exc:
            if not point:
                raise
            raise InputError(f"{_where(path, data, ('sweep',))}: sweep point {','.join(point)}: {exc}") from None
        out.append(loaded)
    return out


def _where(path: Path, data: Any, loc: tuple[Any, ...]) -> str:
    line = line_of(data, loc)
    return f"{path}:{line}" if line else str(path)


def _topology_path(path: Path, file: str, data: Any) -> Path:
    for candidate in (path.parent / file, TOPOLOGY_DIR / file, Path(file)):
        if candidate.exists():
            return candidate
    raise InputError(f"{_where(path, data, ('topology', 'file'))}: topology.file: no such file '{file}'")


def _check_references(loaded: LoadedScenario, data: Any, extra: list[str]) -> None:
    """Everything the schema cannot know: overrides, services, fault kinds, params and targets, metrics."""
    scn, path = loaded.scenario, loaded.path
    for variant in scn.variant_names():
        for quick in (False, True) if scn.quick else (False,):
            try:
                topo = loaded.topology(variant, quick, extra)
            except InputError as exc:
                where = ("variants", variant) if variant in scn.variants else ("topology", "set")
                raise InputError(f"{_where(path, data, where)}: variant '{variant}': {exc}") from None
            probe = Lab(name="validate", topology=topo)
            services = {s.name for s in topo.services}
            for i, phase in enumerate(scn.phases):
                if phase.load and phase.load.service not in services:
                    raise InputError(
                        f"{_where(path, data, ('phases', i, 'load', 'service'))}: phases[{i}].load.service: "
                        f"unknown service '{phase.load.service}' (services: {', '.join(sorted(services))})"
                    )
                for j, step in enumerate(phase.faults):
                    where = _where(path, data, ("phases", i, "faults", j))
                    try:
                        kind = get_kind(step.kind)
                        kind.resolve(probe, step.target, parse_params(kind.name, kind.params, step.params))
                    except NamespaceGone:
                        pass  # a check that needs the running lab (e.g. its nf_conntrack_max): done at apply
                    except LabError as exc:
                        raise InputError(f"{where}: phases[{i}].faults[{j}]: {exc}") from None
    for i, exp in enumerate(scn.expect):
        for loc, ref in ((("expect", i), exp), (("expect", i, "of"), exp.of)):
            if ref is None:
                continue
            metric = CATALOG.get(ref.metric)
            if metric is None:
                raise InputError(f"{_where(path, data, (*loc, 'metric'))}: {describe_unknown(ref.metric)}")
            stat = ref.stat or metric.default_stat
            if stat not in metric.stats:
                raise InputError(
                    f"{_where(path, data, (*loc, 'stat'))}: stat '{stat}' does not apply to {metric.kind} "
                    f"{metric.name}; use {' or '.join(metric.stats)}"
                )
