"""Hold recorded lab runs against an incident's figures: convert, compare, rank hypotheses and pairs. Pure.

A figure is compared with a run when the run has a phase of the figure's kind under the figure's conditions
(instances as an ELB node sees them, cross-zone, connection style, healthy backends). The lab records
per-interval counters; a CloudWatch statistic over a period P is the same quantity over P *ELB* seconds:
with a time scale F, an ELB second is F wall seconds (lab.scenarios.metrics), so a Sum over P is the
phase's count per ELB second times P. Sum adds every ELB node; Average, Minimum and Maximum are over the
ELB nodes' own counts (CloudWatch's per-node datapoints); SampleCount is the number of ELB nodes reporting.
Traffic (RequestCount, traffic's BackendConnectionErrors) is counted per wall second: the workload's rate is
not scaled with the ELB's timers.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from lab.models.incident import Figure, Incident
from lab.scenarios.metrics import phase_value

SHAPE_MIN_CORRELATION = 0.8  # a series "has the shape" from here (Pearson r of the z-scores)
SERIES_TOLERANCE = 0.15  # a series' level, when the figure names no tolerance


@dataclass(frozen=True)
class RunData:
    """One recorded run of one hypothesis at one parameter point (a scenario variant on its own lab)."""

    hypothesis: str  # the scenario's id
    point: tuple[str, ...]  # the sweep point, KEY=VALUE
    variant: str
    journal: str
    command: str  # reproduces this run's point
    header: dict[str, Any]  # the recorder's run header
    intervals: list[dict[str, Any]]
    phases: list[dict[str, Any]]

    @property
    def time_scale(self) -> float:
        return float(self.header.get("time_scale") or 1.0)

    @property
    def key(self) -> str:
        return self.hypothesis + (f" [{', '.join(self.point)}]" if self.point else "")


@dataclass
class Match:
    """A figure's value in one run: what was compared, and how close."""

    figure: str
    hypothesis: str
    point: tuple[str, ...]
    variant: str
    phase: str
    period: int
    lab: float | None
    error: float | None  # relative (absolute for a figure of 0, distance to a bound); None: not comparable
    within: bool
    error_kind: str  # relative | absolute | bound
    journal: str
    command: str
    shape: float | None = None  # series only: correlation of z-scores
    lab_series: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


# --- a run's conditions and phases -------------------------------------------------------------------------


def instances_seen(run: RunData) -> float:
    """Instances one ELB node checks (HealthyHostCount + UnHealthyHostCount), averaged over the ELB nodes."""
    nodes = run.header.get("elb_nodes") or []
    return statistics.fmean(len(n.get("instances", [])) for n in nodes) if nodes else 0.0


def _loads(run: RunData) -> bool:
    return any(p["kind"] in ("steady", "ramp") for p in run.phases)


def healthy(run: RunData) -> bool:
    """No fault applied and every instance InService throughout: the control's condition."""
    if any(p.get("faults") for p in run.phases):
        return False
    for r in run.intervals:
        unhealthy = ((r.get("elb") or {}).get("metrics", {}).get("UnHealthyHostCount") or {}).get("all")
        if unhealthy:
            return False
    return True


def phases_for(kind: str, run: RunData) -> list[dict[str, Any]]:
    """The run's phases under a figure's phase condition; after-load phases keep their second half only
    (the floor, not the tail of the load)."""
    out, seen_load = [], False
    for p in run.phases:
        loading = p["kind"] in ("steady", "ramp")
        if (kind == "idle" and p["kind"] == "idle" and not seen_load) or (kind == "load" and loading):
            out.append(p)
        elif kind == "after-load" and seen_load and p["kind"] in ("idle", "recovery"):
            out.append({**p, "t_start": (p["t_start"] + p["t_end"]) / 2, "name": f"{p['name']} (second half)"})
            break
        seen_load = seen_load or loading
    return out


def mismatch(figure: Figure, run: RunData, phase: dict[str, Any]) -> str | None:
    """Why this run's phase is not under the figure's conditions (None: it is)."""
    c = figure.conditions
    if c.instances is not None and round(instances_seen(run)) != c.instances:
        return f"{instances_seen(run):g} instances per ELB node, not {c.instances}"
    if c.cross_zone is not None and bool(run.header.get("cross_zone")) != c.cross_zone:
        return f"cross-zone {'on' if run.header.get('cross_zone') else 'off'}"
    if c.connections is not None and phase.get("load"):
        style = (phase["load"].get("spec") or {}).get("connections")
        if style and style != c.connections:
            return f"{style} connections"
    if c.healthy_backends is not None and healthy(run) != c.healthy_backends:
        return "backends " + ("healthy" if healthy(run) else "faulty")
    return None


# --- the lab's value of a figure ---------------------------------------------------------------------------


def _inside(run: RunData, phase: dict[str, Any]) -> list[dict[str, Any]]:
    t0, t1 = phase["t_start"], phase["t_end"]
    return [r for r in run.intervals if r["t_start"] >= t0 - 0.05 and r["t_end"] <= t1 + 0.05]


def _per_node(r: dict[str, Any], name: str) -> dict[str, float]:
    m = ((r.get("elb") or {}).get("metrics") or {}).get(name) or {}
    return {k: float(v) for k, v in (m.get("by_elb_node") or {}).items() if v is not None}


def _counter(figure: Figure, intervals: list[dict[str, Any]], period: int, scale: float) -> float | None:
    """A counter's statistic over `period` seconds. Health-check errors are counted per ELB second (the ELB's
    timers run 1/F faster), traffic per wall second (the workload's rate is not scaled): at F=1 both agree."""
    name = figure.metric.split(".", 1)[1]
    wall = sum(r["t_end"] - r["t_start"] for r in intervals)
    if wall <= 0:
        return None
    totals: dict[str, float] = {}
    for r in intervals:
        for node, v in _per_node(r, name).items():
            totals[node] = totals.get(node, 0.0) + v
    if not totals:
        return None
    raw = sum(totals.values())
    if name == "BackendConnectionErrors":
        parts = [(r.get("elb") or {}).get("backend_connection_errors") or {} for r in intervals]
        checks = sum(p.get("health_check", 0) for p in parts)
        traffic = sum(p.get("traffic", 0) for p in parts)
        if checks + traffic == 0:
            checks = raw  # no split recorded: all counted as health checks
        total = (checks / (wall / scale) + traffic / wall) * period
    elif name == "RequestCount":
        total = raw / wall * period
    else:
        total = raw / (wall / scale) * period
    # CloudWatch's per-node statistics: each ELB node's share of the converted total.
    per_period = {n: (v / raw * total if raw else 0.0) for n, v in totals.items()}
    stat = figure.statistic
    if stat == "Sum":
        return total
    if stat == "Average":
        return statistics.fmean(per_period.values())
    if stat == "Maximum":
        return max(per_period.values())
    if stat == "Minimum":
        return min(per_period.values())
    return float(len(per_period))  # SampleCount: one datapoint per ELB node per period


def _gauge(figure: Figure, intervals: list[dict[str, Any]]) -> float | None:
    values = [v for r in intervals for v in _per_node(r, figure.metric.split(".", 1)[1]).values()]
    if not values:
        return None
    return {"Average": statistics.fmean, "Minimum": min, "Maximum": max}[figure.statistic](values)


def lab_value(figure: Figure, run: RunData, phase: dict[str, Any], period: int) -> float | None:
    """The figure's statistic over `period` ELB seconds, from the run's phase (None: no data for it)."""
    if figure.metric == "client.timeout_ratio":
        return phase_value(phase.get("load"), "client.timeout_ratio")
    intervals = _inside(run, phase)
    if figure.metric == "elb.backend_success_share":
        made = sum(sum(_per_node(r, "RequestCount").values()) for r in intervals)
        failed = sum(sum(_per_node(r, "BackendConnectionErrors").values()) for r in intervals)
        return made / (made + failed) if made + failed else None
    if figure.metric in ("elb.HealthyHostCount", "elb.UnHealthyHostCount"):
        return _gauge(figure, intervals)
    return _counter(figure, intervals, period, run.time_scale)


def lab_series(figure: Figure, run: RunData, period: int) -> list[float]:
    """The run as the figure's series: its statistic per `period` ELB seconds, over the whole run."""
    if not run.intervals:
        return []
    width = period * run.time_scale
    t0 = run.intervals[0]["t_start"]
    out: list[float] = []
    for k in itertools.count():
        lo, hi = t0 + k * width, t0 + (k + 1) * width
        if hi > run.intervals[-1]["t_end"] + 0.05:
            break
        window = {"t_start": lo, "t_end": hi, "name": f"period {k}", "kind": "window"}
        v = lab_value(figure, run, window, period)
        out.append(v if v is not None else 0.0)
    return out


# --- comparing -------------------------------------------------------------------------------------------


def error_kind(figure: Figure) -> str:
    if figure.at_least is not None or figure.at_most is not None:
        return "bound"
    return "absolute" if not figure.target else "relative"


def value_error(figure: Figure, lab: float) -> tuple[float, bool]:
    """(error, within tolerance): relative to the figure's value, absolute for 0, distance for bounds."""
    if figure.at_least is not None or figure.at_most is not None:
        lo, hi = figure.at_least, figure.at_most
        if lo is not None and lab < lo:
            return (lab - lo) / lo if lo else lab - lo, False
        if hi is not None and lab > hi:
            return (lab - hi) / hi if hi else lab - hi, False
        return 0.0, True
    target = figure.target or 0.0
    if target == 0:
        diff = lab - target
        return diff, abs(diff) <= (figure.abs_tolerance or 0.0)
    err = (lab - target) / target
    tol = figure.relative_tolerance
    ok = abs(err) <= tol + 1e-9 or (figure.abs_tolerance is not None and abs(lab - target) <= figure.abs_tolerance)
    return err, ok


def regular(figure: Figure, period: int) -> list[float]:
    """The figure's series on its period's grid: a period CloudWatch left out is interpolated from its
    neighbours (get-metric-data omits periods without data)."""
    pts = figure.series
    out: list[float] = []
    for a, b in zip(pts, pts[1:], strict=False):
        steps = max(1, round((b.t - a.t).total_seconds() / period))
        out += [a.v + (b.v - a.v) * k / steps for k in range(steps)]
    return out + [pts[-1].v]


def resample(values: list[float], n: int) -> list[float]:
    """`values` at n evenly spaced points of the same span (linear interpolation)."""
    if n <= 1 or len(values) == 1:
        return [values[0]] * max(n, 1)
    out = []
    for i in range(n):
        x = i * (len(values) - 1) / (n - 1)
        lo = min(int(x), len(values) - 2)
        out.append(values[lo] + (values[lo + 1] - values[lo]) * (x - lo))
    return out


FLAT = 0.02  # a series whose spread is under 2% of its level is flat: z-scores would only scale up noise


def flat(values: list[float]) -> bool:
    level = statistics.fmean(abs(v) for v in values)
    return statistics.pstdev(values) <= FLAT * level if level else True


def pearson(a: list[float], b: list[float]) -> float:
    """Pearson r (the mean product of z-scores); two flat series have the same shape (1), one flat against a
    varying one none (0)."""
    sa, sb = statistics.pstdev(a), statistics.pstdev(b)
    flat_a, flat_b = flat(a), flat(b)
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    return sum((x - ma) / sa * (y - mb) / sb for x, y in zip(a, b, strict=True)) / len(a)


def shape_correlation(a: list[float], b: list[float], max_shift: float = 0.25) -> float:
    """How alike two series' shapes are, on a common time axis (the longer one's length): the best Pearson r
    over shifts of up to `max_shift` of the length, since a lab run's timeline and an export's start at
    unrelated moments. 1 same shape, 0 unrelated, -1 mirrored."""
    n = max(len(a), len(b))
    a, b = resample(a, n), resample(b, n)
    best = pearson(a, b)
    for lag in range(1, int(n * max_shift) + 1):
        if n - lag < 3:
            break
        best = max(best, pearson(a[lag:], b[:-lag]), pearson(a[:-lag], b[lag:]))
    return best


def series_error(figure: Figure, lab: list[float]) -> tuple[float | None, float, float, bool]:
    """(level error, shape, lab level, within): level = mean against mean, shape = correlation of z-scores."""
    observed = regular(figure, period=int(figure.periods[0]))
    level_obs, level_lab = statistics.fmean(observed), statistics.fmean(lab)
    shape = shape_correlation(observed, lab)
    err = (level_lab - level_obs) / level_obs if level_obs else level_lab - level_obs
    tol = figure.tolerance if figure.tolerance is not None else SERIES_TOLERANCE
    return err, shape, level_lab, abs(err) <= tol and shape >= SHAPE_MIN_CORRELATION


def match_figure(figure: Figure, run: RunData, periods: list[int] | None = None) -> tuple[Match | None, str]:
    """The run's closest value of the figure over its phases and candidate periods, or why there is none."""
    phases = phases_for(figure.conditions.phase, run) if not figure.series else [{"name": "whole run", "kind": "-"}]
    if not phases:
        return None, f"no {figure.conditions.phase} phase"
    best: Match | None = None
    why = ""
    for phase in phases:
        # A series spans the whole run: its conditions other than the phase (instances, cross-zone,
        # healthy backends) still apply.
        why = mismatch(figure, run, phase if not figure.series else {}) or ""
        if why:
            continue
        for period in periods or figure.periods:
            m = _one(figure, run, phase, period)
            if m is not None and (best is None or _closeness(m) < _closeness(best)):
                best = m
    return best, (why or "no data for it in the run") if best is None else ""


def _one(figure: Figure, run: RunData, phase: dict[str, Any], period: int) -> Match | None:
    common = {
        "figure": figure.id,
        "hypothesis": run.hypothesis,
        "point": run.point,
        "variant": run.variant,
        "phase": phase["name"],
        "period": period,
        "journal": run.journal,
        "command": run.command,
    }
    if figure.series:
        series = lab_series(figure, run, period)
        if len(series) < 2:
            return None
        err, shape, level, ok = series_error(figure, series)
        kind = "relative" if statistics.fmean(p.v for p in figure.series) else "absolute"
        return Match(**common, lab=level, error=err, within=ok, error_kind=kind, shape=shape, lab_series=series)
    value = lab_value(figure, run, phase, period)
    if value is None:
        return None
    err, ok = value_error(figure, value)
    return Match(**common, lab=value, error=err, within=ok, error_kind=error_kind(figure))


def _closeness(m: Match) -> tuple[int, float]:
    shape_penalty = 0.0 if m.shape is None else (1 - m.shape)
    return (0 if m.within else 1, abs(m.error if m.error is not None else math.inf) + shape_penalty)


# --- ranking ---------------------------------------------------------------------------------------------


def fit(incident: Incident, runs: list[RunData]) -> dict[str, Any]:
    """Every hypothesis point against every figure; the ranking of single hypotheses and of pairs; the table."""
    points: dict[str, list[RunData]] = {}
    for run in runs:
        points.setdefault(run.key, []).append(run)
    hypotheses = []
    for key, group in points.items():
        best: dict[str, Match] = {}
        why: dict[str, str] = {}
        for figures in graphs(incident):
            choices = []
            for period in sorted(set.intersection(*(set(f.periods) for f in figures))):
                found = {}
                for figure in figures:
                    for run in group:
                        m, reason = match_figure(figure, run, [period])
                        if m is None:
                            why.setdefault(figure.id, f"{run.variant}: {reason}")
                        elif figure.id not in found or _closeness(m) < _closeness(found[figure.id]):
                            found[figure.id] = m
                choices.append(found)
            if choices:
                best.update(min(choices, key=_rank))
        hypotheses.append(
            {"key": key, "hypothesis": group[0].hypothesis, "point": list(group[0].point), "best": best, "why": why}
        )
    ranked = sorted(hypotheses, key=lambda h: _rank(h["best"]))
    for h in ranked:
        h["explains"] = sorted(f for f, m in h["best"].items() if m.within)
        h["mean_abs_error"] = _mean_error(h["best"])
    figure_ids = [f.id for f in incident.figures]
    return {
        "hypotheses": ranked,
        "pairs": pairs(ranked, figure_ids),
        "table": table(incident, ranked),
        "estimates": estimates(incident, points),
    }


def _axis_value(point: tuple[str, ...]) -> tuple[str, float] | None:
    if len(point) != 1:
        return None
    key, _, raw = point[0].partition("=")
    try:
        x = float(raw)
    except ValueError:
        return None
    return (key, x) if math.isfinite(x) else None


def estimates(incident: Incident, points: dict[str, list[RunData]]) -> list[dict[str, Any]]:
    """Where a hypothesis was swept along one numeric axis: the axis value at which a straight line through
    its points (least squares, per candidate period) reaches the figure's value. A line is an assumption:
    the health-check floor is linear in ELB nodes, a plateau in the table size; outside the swept range it is
    an extrapolation, and says so."""
    by_hyp: dict[str, list[tuple[str, float, list[RunData]]]] = {}
    for group in points.values():
        axis = _axis_value(group[0].point)
        if axis is not None:
            by_hyp.setdefault(group[0].hypothesis, []).append((axis[0], axis[1], group))
    out = []
    for hyp, swept in by_hyp.items():
        if len({k for k, _, _ in swept}) != 1 or len(swept) < 2:
            continue
        key = swept[0][0]
        for figure in incident.figures:
            target = figure.target
            if target is None or figure.series:
                continue
            for period in figure.periods:
                xy = []
                for _, x, group in swept:
                    found = [m for r in group for m in [match_figure(figure, r, [period])[0]] if m is not None]
                    if found:
                        xy.append((x, min(found, key=_closeness).lab))
                line = _line(xy)
                if line is None:
                    continue
                a, b = line
                x_star = (target - a) / b
                lo, hi = min(x for x, _ in xy), max(x for x, _ in xy)
                out.append(
                    {
                        "figure": figure.id,
                        "hypothesis": hyp,
                        "axis": key,
                        "period": period,
                        "points": [[x, y] for x, y in xy],
                        "value": x_star,
                        "kind": "interpolated" if lo <= x_star <= hi else "extrapolated",
                    }
                )
    return out


def _line(xy: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of the least-squares line, or None (fewer than 2 x values, or flat)."""
    if len({x for x, _ in xy}) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in xy), statistics.fmean(y for _, y in xy)
    sxx = sum((x - mx) ** 2 for x, _ in xy)
    b = sum((x - mx) * (y - my) for x, y in xy) / sxx
    if abs(b) < 1e-12:
        return None
    return my - b * mx, b


def graphs(incident: Incident) -> list[list[Figure]]:
    """Figures grouped by graph (one period for the group); a figure without a graph is its own group."""
    groups: dict[str, list[Figure]] = {}
    for f in incident.figures:
        groups.setdefault(f.graph or f"figure:{f.id}", []).append(f)
    return list(groups.values())


def _mean_error(best: dict[str, Match]) -> float | None:
    # a series' error is its level's plus how far its shape is from the incident's (1 - r)
    errs = [
        min(abs(m.error), 10.0) + (1 - m.shape if m.shape is not None else 0.0)
        for m in best.values()
        if m.error is not None
    ]
    return statistics.fmean(errs) if errs else None


def _rank(best: dict[str, Match]) -> tuple[int, float, int]:
    within = sum(1 for m in best.values() if m.within)
    err = _mean_error(best)
    return (-within, err if err is not None else math.inf, -len(best))


def pairs(ranked: list[dict[str, Any]], figure_ids: list[str]) -> list[dict[str, Any]]:
    """Two hypotheses (different scenarios) combined figure by figure: each figure takes the closer of the two
    runs. This assumes the two mechanisms do not interact (they were not run together): an idle health-check
    floor and per-request connection failures under load touch different figures. Only pairs that explain
    more figures than either member alone are kept."""
    out = []
    for a, b in itertools.combinations(ranked, 2):
        if a["hypothesis"] == b["hypothesis"]:
            continue
        best = {}
        for fid in figure_ids:
            cands = [h["best"][fid] for h in (a, b) if fid in h["best"]]
            if cands:
                best[fid] = min(cands, key=_closeness)
        explains = sorted(f for f, m in best.items() if m.within)
        if len(explains) > max(len(a["explains"]), len(b["explains"])):
            out.append(
                {
                    "members": [a["key"], b["key"]],
                    "best": best,
                    "explains": explains,
                    "mean_abs_error": _mean_error(best),
                }
            )
    out.sort(key=lambda p: _rank(p["best"]))
    return out


def table(incident: Incident, ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per figure: the observed figure, the closest hypothesis point, its value and error, or why none."""
    rows = []
    for figure in incident.figures:
        cands = [h["best"][figure.id] for h in ranked if figure.id in h["best"]]
        row: dict[str, Any] = {
            "figure": figure.id,
            "observation": figure.observation,
            "observed": observed_text(figure),
        }
        if not cands:
            reasons = sorted({f"{h['key']}: {h['why'].get(figure.id, 'no run')}" for h in ranked})
            row.update({"match": None, "why_not": "no run under the figure's conditions (" + "; ".join(reasons) + ")"})
        else:
            best = min(cands, key=_closeness)
            row.update(
                {"match": best.as_dict(), "why_not": "" if best.within else "closest run is outside the tolerance"}
            )
        rows.append(row)
    return rows


def observed_text(figure: Figure) -> str:
    periods = "/".join(f"{p}s" for p in figure.periods)
    if figure.series:
        level = statistics.fmean(p.v for p in figure.series)
        return f"series of {len(figure.series)} points, mean {level:,.4g} ({figure.statistic}/{periods})"
    if figure.at_least is not None or figure.at_most is not None:
        bounds = " and ".join(
            t
            for t in (
                f">= {figure.at_least:g}" if figure.at_least is not None else "",
                f"<= {figure.at_most:g}" if figure.at_most is not None else "",
            )
            if t
        )
        return f"{bounds} ({figure.statistic}/{periods})"
    value = figure.value if isinstance(figure.value, str) else f"{figure.value:g}"
    tol = f" +-{figure.abs_tolerance:g}" if figure.target == 0 and figure.abs_tolerance else ""
    return f"{value}{tol} ({figure.statistic}/{periods})"
