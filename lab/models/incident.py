"""The incident file: figures observed in a real incident (CloudWatch statistics, client symptoms) and where
each comes from, to hold lab runs against. No I/O."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from lab.models.common import Float, Name, Strict, Text

Statistic = Literal["Sum", "Average", "Minimum", "Maximum", "SampleCount"]
Period = Annotated[
    Literal[60, 300], WithJsonSchema({"type": "integer", "enum": [60, 300], "minimum": 60, "maximum": 300})
]
# The figures' metrics are counts, ratios and latencies: never negative.
Observed = Float(0, 1e15)
PhaseCondition = Literal["idle", "load", "after-load"]

# The figures the lab can compute, and the statistics that make sense for each. ELB counters and host
# counts are CloudWatch's (namespace AWS/ELB); the share and the client ratio are derived (see docs/fit.md).
FIGURE_METRICS: dict[str, tuple[str, ...]] = {
    "elb.BackendConnectionErrors": ("Sum", "Average", "Maximum", "Minimum", "SampleCount"),
    "elb.RequestCount": ("Sum", "Average", "Maximum", "Minimum", "SampleCount"),
    "elb.HealthyHostCount": ("Average", "Minimum", "Maximum"),
    "elb.UnHealthyHostCount": ("Average", "Minimum", "Maximum"),
    "elb.backend_success_share": ("Average",),
    "client.timeout_ratio": ("Average",),
}

# "~300", "~1,000", "~15k", "~11K", "0.1", "~10%"
_APPROX = re.compile(r"^\s*(~)?\s*([0-9][0-9,]*(?:\.[0-9]+)?)\s*([kKmM%])?\s*$")
APPROX_TOLERANCE = 0.15


def parse_figure_value(text: str) -> tuple[float, float | None]:
    """(value, tolerance) from "~300" (15%), "~1,000", "~15k", "~10%" (0.10); a plain number has none."""
    match = _APPROX.match(text)
    if not match:
        raise ValueError(f"expected a number such as 300, ~300, ~1,000, ~15k or ~10%, got {text!r}")
    approx, digits, suffix = match.groups()
    value = float(digits.replace(",", ""))
    value *= {"k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "%": 0.01, None: 1.0}[suffix]
    return value, (APPROX_TOLERANCE if approx else None)


class Conditions(Strict):
    """Under what the figure was seen; the fit compares it with lab runs under the same conditions."""

    phase: PhaseCondition = Field(description="idle (no traffic yet), load (under traffic), after-load (traffic gone)")
    instances: int | None = Field(None, ge=1, le=1000, description="Instances registered with the ELB (unset: any)")
    cross_zone: bool | None = Field(None, description="Cross-zone load balancing (unset: not stated)")
    connections: Literal["per-request", "pooled"] | None = Field(None, description="Client connection style")
    healthy_backends: bool | None = Field(
        None, description="false: a control on instances that are not the suspect (e.g. non-Kubernetes ones)"
    )


class SeriesPoint(Strict):
    t: datetime
    v: Observed


class Figure(Strict):
    """One observed figure: a statistic of a metric over a period, as a value or a time series."""

    id: Name
    observation: str = Field("", description="Which of the incident's observations (e.g. O1) it belongs to")
    metric: str = Field(description=f"One of: {', '.join(FIGURE_METRICS)}")
    statistic: Statistic = "Sum"
    periods: list[Period] = Field(
        default_factory=lambda: [60],
        min_length=1,
        description="CloudWatch period(s) in seconds; give both 60 and 300 when the source does not say",
    )
    value: Observed | Text(40) | None = Field(None, description='A number, or "~300" / "~1,000" / "~15k" / "~10%"')
    tolerance: float | None = Field(None, ge=0.001, le=10, description='Relative; "~" alone means 0.15')
    abs_tolerance: float | None = Field(None, ge=0, le=1e9, description="Absolute (for figures of ~0)")
    at_least: float | None = Field(None, ge=0, le=1e12, description="Only a lower bound is known")
    at_most: float | None = Field(None, ge=0, le=1e12, description="Only an upper bound is known")
    series: list[SeriesPoint] = Field(default_factory=list, max_length=100000)
    graph: str = Field(
        "", max_length=100, description="Figures read off one graph share one period (the fit picks it for all)"
    )
    conditions: Conditions
    sources: list[str] = Field(min_length=1, description="Where the figure comes from: quote the sentence")
    note: str = ""

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("expected a number such as 300 or ~300")
        if isinstance(v, int | float) and not math.isfinite(v):
            raise ValueError("not a finite number")
        return v

    @model_validator(mode="after")
    def _shape(self) -> Figure:
        if self.metric not in FIGURE_METRICS:
            raise ValueError(f"@metric: unknown figure metric '{self.metric}' (known: {', '.join(FIGURE_METRICS)})")
        if self.statistic not in FIGURE_METRICS[self.metric]:
            raise ValueError(
                f"@statistic: {self.statistic} does not apply to {self.metric}; "
                f"use {' or '.join(FIGURE_METRICS[self.metric])}"
            )
        if len(set(self.periods)) != len(self.periods):
            raise ValueError("@periods: a period is listed twice")
        given = [n for n in ("value", "at_least", "at_most") if getattr(self, n) is not None] + (
            ["series"] if self.series else []
        )
        if not given:
            raise ValueError("a figure needs value, at_least, at_most or series")
        if self.series and len(given) > 1:
            raise ValueError("@series: a series figure has no value or bounds (its level is the series)")
        if self.series and len(self.series) < 3:
            raise ValueError("@series: a series needs at least 3 points")
        if isinstance(self.value, str):
            try:
                parse_figure_value(self.value)
            except ValueError as exc:
                raise ValueError(f"@value: {exc}") from None
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError("@at_least: must not exceed at_most")
        return self

    @property
    def target(self) -> float | None:
        if self.value is None:
            return None
        return float(self.value) if not isinstance(self.value, str) else parse_figure_value(self.value)[0]

    @property
    def relative_tolerance(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        if isinstance(self.value, str):
            return parse_figure_value(self.value)[1] or 0.0
        return 0.0


class Hypothesis(Strict):
    """A scenario to hold against the incident, optionally over parameter axes (as a scenario's `sweep`)."""

    scenario: str = Field(description="A scenario file or built-in name")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="Replaces the scenario's own sweep")


class Incident(Strict):
    """What was seen, as figures; the hypotheses `lab fit` tries by default."""

    title: str = Field(min_length=3)
    description: str = ""
    source: str = Field("", description="Where the incident is written up (a path or URL)")
    figures: list[Figure] = Field(min_length=1, max_length=1000)
    hypotheses: list[Hypothesis] = Field(default_factory=list, description="Default scenarios for `lab fit`")

    @model_validator(mode="after")
    def _unique(self) -> Incident:
        ids = [f.id for f in self.figures]
        periods: dict[str, set[int]] = {}
        for i, f in enumerate(self.figures):
            if f.id in ids[:i]:
                raise ValueError(f"@figures[{i}].id: figure id '{f.id}' is used twice")
            if f.graph:
                shared = periods.setdefault(f.graph, set(f.periods)) & set(f.periods)
                if not shared:
                    raise ValueError(f"@figures[{i}].periods: no period in common with graph '{f.graph}'")
                periods[f.graph] = shared
        return self
