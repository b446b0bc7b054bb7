"""Judge recorded runs: the scenario's own expectations, and the seed's observations O1-O5. Pure.

The observations (../shared/DOMAIN.md) as checks on recorded metrics:
  O1 idle ELB: a BackendConnectionErrors floor that grows with the number of instances;
  O2 under load: most backend connections fail (the seed: ~10% succeed);
  O3 after traffic moves away: the errors stay at a floor with no client connections;
  O4 clients see timeouts and higher latency;
  O5 the same ELB in front of healthy instances: ~0 BackendConnectionErrors.
Each result has `reproduced`, a `figure` in words and its numbers as `values` (the headline first; the unit
is in the name: _per_min, _ms, _share, ratio), which repeated trials aggregate (lab.scenarios.aggregate).
"""

from __future__ import annotations

import operator
from typing import Any

from lab.models.scenario import Expectation, MetricRef
from lab.scenarios.loader import LoadedScenario
from lab.scenarios.metrics import CATALOG, statistic

COMPARISONS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
# O4: the healthy lab path answers in a few ms; these are far outside it.
SLOW_P99_MS = 200.0
TIMEOUT_RATIO = 0.001
# O3: judge the floor after the longest conntrack timeout the load's closed or failed connections leave
# behind (UNACKNOWLEDGED and MAX_RETRANS, 300 s: data that went unanswered; SYN_SENT, TIME_WAIT: 120 s), in
# ELB seconds, over at least one ELB minute.
O3_SETTLE_S = 300.0
O3_FLOOR_S = 60.0
# A floor recurs: errors in at least half of the window's stretches of one health-check interval (10 s, the
# seed's; every check that fails fails again the next interval), not one or two isolated failed connects.
O3_STRETCH_S = 10.0
O3_RECUR_SHARE = 0.5


def measure(ref: MetricRef, run: dict[str, Any], scale: float) -> float | None:
    metric = CATALOG[ref.metric]
    phase = next(p for p in run["phases"] if p["name"] == ref.phase)
    return statistic(
        metric,
        ref.stat or metric.default_stat,
        run["intervals"],
        phase["t_start"],
        phase["t_end"],
        scale,
        phase.get("load"),
    )


def describe(exp: Expectation) -> str:
    def one(ref: MetricRef) -> str:
        metric = CATALOG[ref.metric]
        where = f" of {ref.variant}" if ref.variant else ""
        return f"{ref.metric} {ref.stat or metric.default_stat} during {ref.phase}{where}"

    lhs = one(exp) if exp.of is None else f"{one(exp)} / {one(exp.of)}"
    rhs = f"{exp.op} {exp.value:g}" if exp.op else f"between {exp.between[0]:g} and {exp.between[1]:g}"
    return f"{lhs} {rhs}"


def check_expectation(exp: Expectation, runs: dict[str, dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """One verdict per run the expectation applies to (its variant, else every variant)."""
    targets = [exp.variant] if exp.variant else list(runs)
    out = []
    for variant in targets:
        value = measure(exp, runs[variant], scale)
        if exp.of is not None and value is not None:
            denom = measure(exp.of, runs[exp.of.variant or variant], scale)
            value = None if not denom else value / denom
        if value is None:
            passed = False
        elif exp.op:
            passed = COMPARISONS[exp.op](value, exp.value)
        else:
            passed = exp.between[0] <= value <= exp.between[1]
        text = describe(exp) + (f" [{variant}]" if len(targets) > 1 or (exp.variant is None and len(runs) > 1) else "")
        out.append({"text": text, "measured": value, "passed": passed, "why": exp.why or ""})
    return out


def evaluate(loaded: LoadedScenario, runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    by_variant = {r["variant"]: r for r in runs}
    verdicts = [v for exp in loaded.scenario.expect for v in check_expectation(exp, by_variant, scale)]
    return {"expectations": verdicts, "observations": observations(runs, scale, loaded.scenario.observations)}


# --- the seed's observations -------------------------------------------------------------------------------


def _stat(run: dict[str, Any], metric: str, phase: dict[str, Any], scale: float, stat: str | None = None):
    m = CATALOG[metric]
    return statistic(
        m, stat or m.default_stat, run["intervals"], phase["t_start"], phase["t_end"], scale, phase.get("load")
    )


def _first(run: dict[str, Any], kinds: tuple[str, ...], after_load: bool = False) -> dict[str, Any] | None:
    seen_load = False
    for p in run["phases"]:
        if p["kind"] in ("steady", "ramp"):
            seen_load = True
        if p["kind"] in kinds and (seen_load or not after_load):
            return p
    return None


def observations(runs: list[dict[str, Any]], scale: float, claims: list[str]) -> dict[str, dict[str, Any]]:
    out = {"O1": _o1(runs, scale), "O2": _o2(runs, scale), "O3": _o3(runs, scale), "O4": _o4(runs, scale)}
    # O5 is about a healthy ELB path: only a control scenario (one that claims it) can speak to it.
    out["O5"] = _o5(runs, scale) if "O5" in claims else {"reproduced": None, "figure": "not a control scenario"}
    return out


def _o1(runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    floors = []
    for run in runs:
        idle = _first(run, ("idle",))
        if idle is None:
            return {"reproduced": None, "figure": "no idle phase"}
        floors.append((run["instances"], _stat(run, "elb.BackendConnectionErrors", idle, scale) or 0.0, run["variant"]))
    text = ", ".join(f"{f:.0f}/min with {n} instances" for n, f, _ in floors)
    if any(f <= 0 for _, f, _ in floors):
        return {"reproduced": False, "figure": text, "values": _floor_values(floors)}
    sizes = sorted({n for n, _, _ in floors})
    if len(sizes) < 2:
        return {
            "reproduced": None,
            "figure": f"{text}; proportionality not tested (one size)",
            "values": _floor_values(floors),
        }
    (n_lo, f_lo, _), (n_hi, f_hi, _) = min(floors), max(floors)
    ratio, want = f_hi / f_lo, n_hi / n_lo
    ok = abs(ratio / want - 1) <= 0.25
    values = {"ratio": ratio, **_floor_values(floors)}
    return {"reproduced": ok, "figure": f"{text} (x{ratio:.2f} for x{want:.2f} instances)", "values": values}


def _floor_values(floors: list[tuple[int, float, str]]) -> dict[str, float]:
    if len(floors) == 1:
        return {"floor_per_min": floors[0][1]}
    return {f"{variant}.floor_per_min": f for _, f, variant in floors}


def _o2(runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    worst = None
    for run in runs:
        for p in run["phases"]:
            if p["kind"] not in ("steady", "ramp"):
                continue
            ok = _stat(run, "elb.RequestCount", p, scale, "sum") or 0
            bad = _stat(run, "elb.BackendConnectionErrors", p, scale, "sum") or 0
            if ok + bad == 0:
                continue
            share = ok / (ok + bad)
            if worst is None or share < worst[0]:
                worst = (share, ok, bad, p["name"])
    if worst is None:
        return {"reproduced": None, "figure": "no backend connections under load"}
    share, ok, bad, name = worst
    return {
        "reproduced": 0 < share < 0.5,  # the seed: ~10% succeed (some, not none)
        "figure": f"{share:.0%} of backend connections succeeded during {name} ({ok:.0f} made, {bad:.0f} errors)",
        "values": {"success_share": share, "made": ok, "errors": bad},
    }


def _o3(runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    figures, verdicts, values = [], [], {}
    for run in runs:
        after = _first(run, ("recovery", "idle"), after_load=True)
        if after is None:
            continue
        # A floor, not what the load left behind: its connections' conntrack entries (up to 300 s, scaled
        # with the run like the phase) can keep a node's table full, and its connects failing, after the
        # clients stop. Judge what remains once they have expired: errors, no lower than half of those
        # while they expired, and no client traffic.
        settled = after["t_start"] + O3_SETTLE_S * scale
        early = _stat(run, "elb.BackendConnectionErrors", {**after, "t_end": settled}, scale) or 0.0
        floor = _stat(run, "elb.BackendConnectionErrors", {**after, "t_start": settled}, scale) or 0.0
        requests = _stat(run, "client.requests", {**after, "t_start": settled}, scale, "sum") or 0
        prefix = f"{run['variant']}." if len(runs) > 1 else ""
        if after["t_end"] - settled < O3_FLOOR_S * scale:
            if not _stat(run, "elb.BackendConnectionErrors", after, scale, "sum"):
                verdicts.append(False)  # no errors at all: no floor, however long the phase
                values[f"{prefix}floor_per_min"] = 0.0
                figures.append(f"0/min during {after['name']}")
                continue
            verdicts.append(None)
            seconds = (after["t_end"] - after["t_start"]) / scale
            figures.append(
                f"{after['name']} lasts {seconds:.0f} s: too short to see past the load's conntrack entries "
                f"({O3_SETTLE_S:.0f} s) and judge a floor ({O3_FLOOR_S:.0f} s more)"
            )
            continue
        hit, stretches = _recurrence(run, settled, after["t_end"], scale)
        recurs = stretches > 0 and hit >= O3_RECUR_SHARE * stretches
        verdicts.append(floor > 0 and floor >= 0.5 * early and requests == 0 and recurs)
        values.update({f"{prefix}floor_per_min": floor, f"{prefix}early_per_min": early, f"{prefix}requests": requests})
        trend = "" if floor >= 0.5 * early else f", down from {early:.0f}/min"
        if floor > 0 and not recurs:
            trend += f", in {hit} of {stretches} {O3_STRETCH_S:.0f}-second stretches only: isolated errors, not a floor"
        where = f"during {after['name']} after {O3_SETTLE_S:.0f} s"
        held = _tables_held(after.get("conntrack") or {}) if floor > 0 else ""
        figures.append(f"{floor:.0f}/min {where}{trend} with {requests:.0f} client requests{held}")
    if not verdicts:
        return {"reproduced": None, "figure": "no idle or recovery phase after load"}
    reproduced = False if False in verdicts else (None if None in verdicts else True)
    return {"reproduced": reproduced, "figure": "; ".join(figures), "values": values}


def _recurrence(run: dict[str, Any], t_start: float, t_end: float, scale: float) -> tuple[int, int]:
    """(stretches with BackendConnectionErrors, stretches) of O3_STRETCH_S ELB seconds in [t_start, t_end);
    an interval counts in the stretch holding its midpoint."""
    metric = CATALOG["elb.BackendConnectionErrors"]
    width = O3_STRETCH_S * scale
    stretches = max(1, int((t_end - t_start) / width + 1e-9))
    hit = set()
    for r in run["intervals"]:
        mid = (r["t_start"] + r["t_end"]) / 2
        if t_start <= mid < t_end and (metric.extract(r) or 0) > 0:
            hit.add(min(stretches - 1, int((mid - t_start) / width)))
    return len(hit), stretches


def _tables_held(census: dict[str, Any]) -> str:
    """What the nodes' tables held at the phase's end, for a floor that outlived its traffic: the evidence
    that tells a hypothesis's own floor from entries the load left behind."""
    parts = []
    for node, c in census.items():
        if not c.get("entries"):
            continue
        states = ", ".join(f"{state} {n}" for state, n in list(c["by_state"].items())[:3])
        parts.append(
            f"{node} {c['entries']} ({c['assured']} ASSURED; {states}; longest {c['longest_s']} s {c['longest_state']})"
        )
    return f"; node tables at its end: {'; '.join(parts)}" if parts else "; node tables empty at its end"


def _o4(runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    best = None
    for run in runs:
        for p in run["phases"]:
            load = p.get("load")
            if not load or not load.get("requests"):
                continue
            timeouts = _stat(run, "client.timeout_ratio", p, scale) or 0.0
            p99 = _stat(run, "client.latency_p99_ms", p, scale) or 0.0
            if best is None or (timeouts, p99) > (best[0], best[1]):
                best = (timeouts, p99, p["name"])
    if best is None:
        return {"reproduced": None, "figure": "no load phase"}
    timeouts, p99, name = best
    # Latency percentiles cover answered calls; a call that timed out took its whole timeout, so 1% of
    # timeouts is itself a slow p99 for the callers.
    return {
        "reproduced": timeouts >= TIMEOUT_RATIO and (p99 >= SLOW_P99_MS or timeouts >= 0.01),
        "figure": f"{timeouts:.1%} timeouts, p99 {p99:.0f} ms during {name}",
        "values": {"timeout_ratio": timeouts, "p99_ms": p99},
    }


def _o5(runs: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    if any(p.get("faults") for run in runs for p in run["phases"]):
        return {"reproduced": None, "figure": "the scenario injects a fault"}
    total, minutes = 0.0, 0.0
    for run in runs:
        for p in run["phases"]:
            total += _stat(run, "elb.BackendConnectionErrors", p, scale, "sum") or 0
            minutes += (p["t_end"] - p["t_start"]) / scale / 60
    rate = total / minutes if minutes else 0.0
    return {
        "reproduced": rate < 1.0,
        "figure": f"{rate:.1f} errors/min over {minutes:.0f} ELB minutes",
        "values": {"errors_per_min": rate, "elb_minutes": minutes},
    }
