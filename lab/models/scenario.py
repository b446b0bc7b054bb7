"""The scenario file: one hypothesis replayed as a timeline of phases, with expected signatures. No I/O."""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from lab.models.common import DurationIn, Float, Int, Name, Strict, Text

PhaseKind = Literal["idle", "ramp", "steady", "recovery"]
Stat = Literal["per_minute", "sum", "mean", "max", "min", "last", "value"]
Op = Literal["<", "<=", ">", ">=", "==", "!="]
OBSERVATIONS = ("O1", "O2", "O3", "O4", "O5")
DAY = 86400.0
MAX_RATE = 100_000.0  # requests per second; far beyond what the load generator sends on this machine
# A scenario is a timeline run on one machine: phases of up to a day, faults within them.
PhaseDuration = DurationIn(1, DAY)
Setting = Text(200)  # one KEY=VALUE override
# Metrics are counts, ratios and latencies: never negative, and a billion is beyond any run's count.
Figure = Float(0, 1e9)
# A sweep value is one scalar: it becomes a KEY=VALUE override, as `--set` takes it.
SweepValue = Annotated[
    StrictBool | Int(-(10**9), 10**9) | Text(200) | Float(-1e12, 1e12), Field(union_mode="left_to_right")
]
SWEEP_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
MAX_SWEEP_POINTS = 64


def sweep_text(value: Any) -> str:
    """A sweep value as the override text `--set` would take (YAML scalar: true, 6, 0.5, TCP:30999)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class TopologyRef(Strict):
    file: Text(500) = Field(description="Topology YAML, relative to the scenario file or to topologies/")
    set: list[Setting] = Field(
        default_factory=list, max_length=50, description="Overrides, KEY=VALUE, as `lab up --set`"
    )


class Workload(Strict):
    service: Name
    rate: Float(0.01, MAX_RATE) = Field(description="Requests per second (open loop)")
    rate_end: Float(0.01, MAX_RATE) | None = Field(None, description="Ramp: the rate at the end of the phase")
    connections: Literal["per-request", "pooled"] = "per-request"
    pool: Int(1, 4096) = Field(8, description="pooled: connections kept open")
    connect_timeout: DurationIn(0.01, 60) = Field(1.0, description="A connect slower than this is a timeout")
    timeout: DurationIn(0.01, 300) = Field(2.0, description="A call slower than this is a timeout")
    method: Literal["ping", "echo", "work"] = "ping"
    payload: Int(0, 16 * 1024 * 1024) = Field(0, description="echo: bytes; work: milliseconds")
    via: Literal["elb", "node", "pod"] = "elb"


class FaultStep(Strict):
    kind: Text(40) = Field(description="A fault kind (lab fault list)")
    target: Text(40) | None = Field(None, description="What it acts on, as `--target` (lab fault list)")
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's parameters (lab fault list)")
    at: DurationIn(0, DAY) = Field(0.0, description="Applied this long after the phase starts")
    for_: DurationIn(0.1, DAY) | None = Field(
        None, alias="for", description="Reverted after this long (default: see until)"
    )
    until: Literal["phase-end", "scenario-end"] = Field(
        "phase-end", description="Without `for`: revert at the end of this phase or of the whole scenario"
    )

    model_config = Strict.model_config | {"populate_by_name": True}


class Phase(Strict):
    name: Name
    kind: PhaseKind
    duration: PhaseDuration = Field(description="How long the phase lasts")
    load: Workload | None = None
    faults: list[FaultStep] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _shape(self) -> Phase:
        if self.kind in ("idle", "recovery") and self.load is not None:
            raise ValueError(f"@load: an {self.kind} phase has no workload; use steady or ramp")
        if self.kind in ("steady", "ramp") and self.load is None:
            raise ValueError(f"@load: a {self.kind} phase needs a workload")
        if self.kind == "ramp" and (self.load is None or self.load.rate_end is None):
            raise ValueError("@load.rate_end: a ramp phase needs rate_end")
        for i, fault in enumerate(self.faults):
            if fault.at >= self.duration:
                raise ValueError(f"@faults[{i}].at: {fault.at:g}s is not inside the {self.duration:g}s phase")
        return self


class MetricRef(Strict):
    """One number taken from a run: a metric over a phase, summarised by a statistic."""

    metric: Text(80) = Field(description="A recorded metric, e.g. elb.BackendConnectionErrors (lab scenario metrics)")
    phase: Name
    stat: Stat | None = Field(None, description="per_minute|sum (counters), mean|max|min|last (gauges), value")
    variant: Name | None = Field(None, description="Which variant's run (default: every variant)")


class Expectation(MetricRef):
    op: Op | None = Field(None, description="Compare with `value`")
    value: Figure | None = None
    between: tuple[Figure, Figure] | None = Field(None, description="[low, high], both included (instead of op)")
    of: MetricRef | None = Field(None, description="Ratio: this metric divided by `of` (e.g. 9 vs 3 instances)")
    why: Text(500) = Field("", description="Shown in reports")

    @model_validator(mode="after")
    def _predicate(self) -> Expectation:
        if (self.op is None) == (self.between is None):
            raise ValueError("an expectation needs either op+value or between: [low, high]")
        if self.op is not None and self.value is None:
            raise ValueError("@value: op needs a value")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError("@between: low must not exceed high")
        return self


class Scenario(Strict):
    """One hypothesis, replayed end to end."""

    title: Text(200) = Field(min_length=3, description="A short name for reports (at least 3 characters)")
    hypothesis: Text(4000) = Field(min_length=10, description="What this scenario claims explains the seed's graphs")
    signature: Text(4000) = Field("", description="What the hypothesis predicts the graphs look like")
    observations: list[Literal["O1", "O2", "O3", "O4", "O5"]] = Field(
        default_factory=list, description="Seed observations this hypothesis claims to explain"
    )
    topology: TopologyRef = Field(description="The lab it runs on")
    variants: dict[Name, list[Setting]] = Field(
        default_factory=dict,
        max_length=10,
        description="Run the timeline once per variant, each with these extra overrides",
    )
    quick: QuickSettings | None = Field(None, description="How `--quick` runs it")
    phases: list[Phase] = Field(min_length=1, max_length=50, description="The timeline, one phase after another")
    expect: list[Expectation] = Field(
        default_factory=list, max_length=100, description="What a run must measure for the hypothesis to hold"
    )
    sweep: dict[Setting, list[SweepValue]] = Field(
        default_factory=dict,
        max_length=10,
        description="Parameter axes, run as a grid (one lab per point): a topology override key "
        "(elb.nodes_per_az), or phases.<phase>.load.<field> / phases.<phase>.faults.<i>.params.<param>",
    )

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(value) == 1:
            raise ValueError("declare at least two variants (or none)")
        return value

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        points = 1
        for key, values in value.items():
            if not SWEEP_KEY.match(key):
                raise ValueError(
                    f"@sweep.{key}: expected a dotted key such as elb.nodes_per_az or phases.steady.load.rate"
                )
            if not values:
                raise ValueError(f"@sweep.{key}: give at least one value")
            if len({str(v) for v in values}) != len(values):
                raise ValueError(f"@sweep.{key}: a value is listed twice")
            points *= len(values)
        if points > MAX_SWEEP_POINTS:
            raise ValueError(f"@sweep: {points} points; at most {MAX_SWEEP_POINTS} (each point is a lab run)")
        return value

    def sweep_points(self) -> list[list[str]]:
        """The grid as KEY=VALUE lists, in the axes' order (first axis slowest): [[]] without a sweep."""
        axes = [[f"{k}={sweep_text(v)}" for v in values] for k, values in self.sweep.items()]
        return [list(p) for p in itertools.product(*axes)]

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError("@phases: phase names must be unique")
        for i, exp in enumerate(self.expect):
            for where, ref in (("", exp), (".of", exp.of)):
                if ref is None:
                    continue
                if ref.phase not in names:
                    raise ValueError(
                        f"@expect[{i}]{where}.phase: unknown phase '{ref.phase}' (phases: {', '.join(names)})"
                    )
                if ref.variant is not None and ref.variant not in self.variants:
                    known = ", ".join(self.variants) or "none declared"
                    raise ValueError(f"@expect[{i}]{where}.variant: unknown variant '{ref.variant}' ({known})")
        return self

    @model_validator(mode="after")
    def _length(self) -> Scenario:
        if self.duration > DAY:
            raise ValueError(f"@phases: the phases last {self.duration:g}s in all; a scenario lasts at most a day")
        return self

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.phases)

    def variant_names(self) -> list[str]:
        return list(self.variants) or ["default"]


class QuickSettings(Strict):
    """How `--quick` runs this scenario: its own time scale and extra overrides (e.g. a smaller table)."""

    time_scale: Float(0.001, 1) = Field(0.1, description="Timers and phases x this (1: real time)")
    set: list[Setting] = Field(default_factory=list, max_length=50, description="Extra overrides for quick runs")
    note: Text(2000) = Field(
        "", description="Where a timer matters: why quick and full-scale verdicts can or cannot agree"
    )


Scenario.model_rebuild()
