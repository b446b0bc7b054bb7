"""Repeated trials of one scenario judged together: agreement counts, medians with spread, all-runs expectations. Pure.

A trial is one repeat of a scenario (every variant run once). A trial counts unless it errored or the lab
itself was the bottleneck (`lab_limited`, filled in by the saturation checks): only counted trials vote.
- an observation is YES k/k, no 0/k, or FLAKY j/k (any disagreement between counted trials);
- each of its numeric values is a median with its spread (min-max), and a bootstrap 95% interval of the
  median from 5 counted trials on (seeded: the same trials give the same report);
- an expectation passes only if it passed in every counted trial.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from lab.models.scenario import OBSERVATIONS

BOOTSTRAP_FROM = 5  # fewer trials than this: min-max only (an interval from 3 points says nothing)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 2017  # fixed: a report made twice from the same trials is the same report


def is_number(v: Any) -> bool:
    """A finite int or float (NaN and inf are not numbers; neither is a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def counted(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials that vote: finished without an error, and not limited by the lab itself."""
    return [t for t in trials if not t.get("error") and not t.get("lab_limited")]


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max (and a bootstrap 95% interval of the median from BOOTSTRAP_FROM values on)."""
    out: dict[str, Any] = {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "ci95": None,
    }
    if len(values) >= BOOTSTRAP_FROM:
        out["ci95"] = bootstrap_median_ci(values)
    return out


def bootstrap_median_ci(values: list[float]) -> list[float]:
    # Imported at use: the CLI starts without numpy.
    import numpy as np

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    data = np.asarray(values, dtype=float)
    medians = np.median(rng.choice(data, size=(BOOTSTRAP_RESAMPLES, data.size), replace=True), axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return [float(lo), float(hi)]


def agreement(verdicts: list[bool | None]) -> dict[str, Any]:
    """YES k/k, no 0/k, FLAKY j/k or n/a, over the counted trials' verdicts (None: cannot speak to it)."""
    yes, n = sum(1 for v in verdicts if v is True), len(verdicts)
    if n == 0 or all(v is None for v in verdicts):
        word, reproduced = "n/a", None
    elif yes == n:
        word, reproduced = "YES", True
    elif all(v is False for v in verdicts):
        word, reproduced = "no", False
    else:
        word, reproduced = "FLAKY", None
    return {"verdict": word, "reproduced": reproduced, "yes": yes, "counted": n}


# --- numbers as text -----------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 or v == int(v) else f"{v:.3g}"


def _unit(key: str) -> tuple[str, str, float]:
    """(prefix, suffix, factor) for a value's name: its unit is in the name."""
    name = key.rsplit(".", 1)[-1]
    if name.endswith(("_share", "timeout_ratio")):
        return "", "%", 100.0
    if name == "ratio":
        return "x", "", 1.0
    if name.endswith("_per_min"):
        return "", "/min", 1.0
    if name.endswith("_ms"):
        return "", " ms", 1.0
    return "", "", 1.0


def format_spread(key: str, s: dict[str, Any]) -> str:
    """`54/min (50-58)`, `x3.00 (2.95-3.10; 95% CI 2.97-3.04)`, `10% ...`: median, then min-max."""
    pre, suf, k = _unit(key)
    fmt = (lambda v: f"{v * k:.2f}") if pre == "x" else (lambda v: _num(v * k))
    text = f"{pre}{fmt(s['median'])}{suf}"
    if fmt(s["min"]) != fmt(s["max"]):  # a spread too small to print is no spread
        extra = f"{fmt(s['min'])}-{fmt(s['max'])}"
        if s.get("ci95"):
            extra += f"; 95% CI {fmt(s['ci95'][0])}-{fmt(s['ci95'][1])}"
        text += f" ({extra})"
    return text


# --- one scenario entry ----------------------------------------------------------------------------------------


def observation(results: list[dict[str, Any]], repeats: list[int] | None = None) -> dict[str, Any]:
    """One observation over the counted trials' results ({reproduced, figure, values}); `repeats` names them."""
    out = agreement([r.get("reproduced") for r in results])
    values: dict[str, list[float]] = {}
    for r in results:
        for key, v in (r.get("values") or {}).items():
            if is_number(v):
                values.setdefault(key, []).append(float(v))
    out["values"] = {key: spread(vs) for key, vs in values.items()}
    names = repeats or list(range(1, len(results) + 1))
    out["figures"] = [{"repeat": n, "figure": r.get("figure", "")} for n, r in zip(names, results, strict=True)]
    if len(results) == 1:
        out["figure"] = results[0].get("figure", "")
    elif out["values"]:
        key = next(iter(out["values"]))  # the headline: an observation lists its main figure first
        out["figure"] = format_spread(key, out["values"][key])
    else:
        out["figure"] = results[0].get("figure", "") if results else ""
    return out


def expectation(text: str, verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """An expectation over the counted trials: passed only if it passed in every one of them."""
    measured = [v["measured"] for v in verdicts if is_number(v.get("measured"))]
    k, n = sum(1 for v in verdicts if v["passed"]), len(verdicts)
    return {
        "text": text,
        "passed": n > 0 and k == n,
        "passed_runs": k,
        "counted": n,
        "measured": statistics.median(measured) if measured else None,
        "spread": spread([float(m) for m in measured]) if measured else None,
        "measured_all": [v.get("measured") for v in verdicts],
        "why": next((v.get("why", "") for v in verdicts), ""),
    }


def aggregate(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's judged fields from its trials: status, expectations, observations, and what is missing.

    `entry["planned"]` lists the unit ids this report should hold; a planned unit without a trial is
    missing (an interrupted run, or a shard not merged) and keeps the entry from passing.
    """
    trials = entry.get("trials", [])
    votes = counted(trials)
    texts = list(dict.fromkeys(e["text"] for t in votes for e in t.get("expectations", [])))  # in file order
    expectations = [
        expectation(text, [e for t in votes for e in t.get("expectations", []) if e["text"] == text]) for text in texts
    ]
    observations = {}
    for o in OBSERVATIONS:
        speaking = [t for t in votes if o in t.get("observations", {})]
        observations[o] = observation([t["observations"][o] for t in speaking], [t["repeat"] for t in speaking])
    present = {t["unit"] for t in trials}
    missing = [u for u in entry.get("planned", []) if u not in present]
    limited = [t for t in trials if t.get("lab_limited") and not t.get("error")]
    errors = [t for t in trials if t.get("error")]
    if errors:
        status = "error"
    elif any(not e["passed"] for e in expectations):
        status = "failed"
    elif missing:
        status = "incomplete"
    elif not votes:
        status = "lab-limited"
    else:
        status = "passed"
    return {
        "status": status,
        "expectations": expectations,
        "observations": observations,
        "trials_counted": len(votes),
        "trials_limited": len(limited),
        "trials_error": len(errors),
        "missing": missing,
        "error": "; ".join(f"repeat {t['repeat']}: {t['error']}" for t in errors) or None,
    }


def status_note(entry: dict[str, Any]) -> str:
    """The verdict column: status, and what did not vote or is missing."""
    notes = []
    if entry.get("trials_limited"):
        notes.append(f"{entry['trials_limited']} lab-limited, not counted")
    if entry.get("trials_error"):
        notes.append(f"{entry['trials_error']} errored")
    if entry.get("missing"):
        notes.append(f"{len(entry['missing'])} missing")
    return entry["status"] + (f" ({'; '.join(notes)})" if notes else "")
