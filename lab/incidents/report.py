"""The fit's report: fit.json, fit.md (the figure table, the ranking, the runs and their commands), and one plot
per figure overlaying the incident's figure and the closest lab run's series."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lab.incidents.fit import Match, RunData, lab_series
from lab.models.incident import Figure, Incident


def plain(result: dict[str, Any]) -> dict[str, Any]:
    """The fit's result as JSON-ready data (matches as dicts)."""

    def conv(v: Any) -> Any:
        if isinstance(v, Match):
            return v.as_dict()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [conv(x) for x in v]
        return v

    return conv(result)


def point_text(point: list[str] | tuple[str, ...]) -> str:
    return ", ".join(point) if point else "as in its file"


def error_text(m: dict[str, Any]) -> str:
    if m["error"] is None:
        return "-"
    if m.get("error_kind") == "absolute":
        level = f"{m['error']:+.3g} (absolute)"
    elif m.get("error_kind") == "bound":
        level = "inside the bound" if m["error"] == 0 else f"{m['error']:+.0%} from the bound"
    else:
        level = f"{m['error']:+.0%}"
    return level if m.get("shape") is None else f"level {level}, shape r={m['shape']:.2f}"


def value_text(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:,.0f}"


def markdown(result: dict[str, Any], incident: Incident, meta: dict[str, Any]) -> str:
    lines = [f"# Fit: {incident.title}", ""]
    lines.append(
        f"{meta['runs']} lab runs of {meta['points']} hypothesis points, {meta.get('note', '')}".rstrip(", ") + "."
    )
    lines += [
        "",
        "| figure | observed | best hypothesis and parameters | lab value | error | within |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["table"]:
        m = row["match"]
        head = f"{row['figure']} ({row['observation']})" if row["observation"] else row["figure"]
        if m is None:
            lines.append(f"| {head} | {row['observed']} | none: {row['why_not']} | - | - | no |")
            continue
        where = f"{m['hypothesis']} ({point_text(m['point'])}; variant {m['variant']}; {m['phase']}; {m['period']} s)"
        lines.append(
            f"| {head} | {row['observed']} | {where} | {value_text(m['lab'])} | {error_text(m)} | "
            f"{'**yes**' if m['within'] else 'no'} |"
        )
    missed = [r for r in result["table"] if not (r["match"] and r["match"]["within"])]
    if missed:
        lines += ["", "Figures no run reproduced within tolerance:", ""]
        for row in missed:
            m = row["match"]
            closest = (
                f"closest {m['hypothesis']} ({point_text(m['point'])}) at {value_text(m['lab'])}, {error_text(m)}"
                if m
                else row["why_not"]
            )
            lines.append(f"- {row['figure']}: {closest}")
    if result.get("estimates"):
        lines += [
            "",
            "## Where a swept parameter would reach each figure",
            "",
            "A least-squares line through the swept points of one hypothesis (one numeric axis), solved for the "
            "figure's value: an estimate, not a run; outside the swept range an extrapolation.",
            "",
            "| figure | hypothesis | period | axis = value | from points (axis, lab value) |",
            "|---|---|---|---|---|",
        ]
        for e in result["estimates"]:
            pts = "; ".join(f"{x:g}: {value_text(y)}" for x, y in e["points"])
            lines.append(
                f"| {e['figure']} | {e['hypothesis']} | {e['period']} s | {e['axis']} = {e['value']:.3g} "
                f"({e['kind']}) | {pts} |"
            )
    lines += [
        "",
        "## Hypotheses, ranked",
        "",
        "| rank | hypothesis point | figures within tolerance | mean abs error |",
    ]
    lines.append("|---|---|---|---|")
    for i, h in enumerate(result["hypotheses"], 1):
        err = "-" if h["mean_abs_error"] is None else f"{h['mean_abs_error']:.0%}"
        lines.append(f"| {i} | {h['key']} | {', '.join(h['explains']) or 'none'} | {err} |")
    if result["pairs"]:
        lines += [
            "",
            "## Pairs",
            "",
            "Two hypotheses combined figure by figure (each figure from the closer member's run; the two were not "
            "run together, which assumes their mechanisms do not interact). Only pairs that explain more than "
            "either member alone.",
            "",
            "| pair | figures within tolerance | mean abs error |",
            "|---|---|---|",
        ]
        for p in result["pairs"][:10]:
            err = "-" if p["mean_abs_error"] is None else f"{p['mean_abs_error']:.0%}"
            lines.append(f"| {' + '.join(p['members'])} | {', '.join(p['explains'])} | {err} |")
    lines += ["", "## Runs behind each number", ""]
    for row in result["table"]:
        m = row["match"]
        if m:
            lines.append(f"- {row['figure']}: journal `{m['journal']}`; reproduce: `{m['command']}`")
    lines += ["", "## Every run", ""]
    for cmd, journals in sorted(meta["commands"].items()):
        lines.append(f"- `{cmd}`: " + ", ".join(f"`{Path(j).name}`" for j in journals))
    return "\n".join(lines) + "\n"


def plot_figure(figure: Figure, match: dict[str, Any], run: RunData | None, out: Path) -> bool:
    """The incident's figure (series, or value and tolerance band) over the closest run's series."""
    import matplotlib  # imported at use for start-up speed (matplotlib: ~0.5 s; only reports draw)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    period = match["period"]
    lab = match.get("lab_series") or (lab_series(figure, run, period) if run is not None else [])
    if not lab and not figure.series:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = [i * period / 60 for i in range(len(lab))]
    # the lab dashed on top: where it lies on the incident's line both stay visible
    ax.plot(
        xs,
        lab,
        marker=".",
        linestyle="--",
        color="#9467bd",
        zorder=3,
        label=f"lab: {match['hypothesis']} {point_text(match['point'])}",
    )
    if figure.series:
        t0 = figure.series[0].t
        obs_x = [(p.t - t0).total_seconds() / 60 for p in figure.series]
        ax.plot(obs_x, [p.v for p in figure.series], marker=".", color="#d62728", label="incident")
    elif figure.target is not None:
        tol = figure.relative_tolerance * figure.target or (figure.abs_tolerance or 0)
        ax.axhline(figure.target, color="#d62728", label=f"incident {figure.value}")
        if tol:
            ax.axhspan(figure.target - tol, figure.target + tol, color="#d62728", alpha=0.12)
    elif figure.at_least is not None:
        ax.axhline(figure.at_least, color="#d62728", linestyle="--", label=f"incident >= {figure.at_least:g}")
    ax.set_xlabel("ELB minutes from the run's start")
    ax.set_ylabel(f"{figure.metric} {figure.statistic}/{period}s")
    ax.set_title(figure.id)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def write(
    result: dict[str, Any], incident: Incident, runs: list[RunData], meta: dict[str, Any], out: Path
) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    data = plain(result)
    by_journal = {r.journal: r for r in runs}
    plots = {}
    for figure, row in zip(incident.figures, data["table"], strict=True):
        m = row["match"]
        if m is None:
            continue
        png = out / f"fit-{figure.id}.png"
        with contextlib.suppress(Exception):  # a plot is a view; the table stands without it
            if plot_figure(figure, m, by_journal.get(m["journal"]), png):
                plots[figure.id] = png.name
    data["plots"] = plots
    data["meta"] = meta
    files = {"fit.json": out / "fit.json", "fit.md": out / "fit.md"}
    files["fit.json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    files["fit.md"].write_text(markdown(data, incident, meta))
    return {k: str(v) for k, v in files.items()}
