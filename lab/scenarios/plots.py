"""Plots of a scenario's trials: one trial's own plots, or every repeat overlaid per variant with the median.

Drawn from the runs' journals, so a merge of shards (whose repeats ran on different machines) draws the
same overlay as an unsharded run. matplotlib, Agg (no display).
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.metrics.plot import ERRORS_COLOR, REQUESTS_COLOR
from lab.metrics.recorder import read_series


def entry_plots(entry: dict[str, Any], report_dir: Path) -> list[str]:
    """The plots a report shows for a scenario entry (file names in report_dir)."""
    trials = [t for t in entry.get("trials", []) if t.get("runs")]
    if len(trials) == 1:
        return list(trials[0].get("plots", []))
    out = []
    variants = list(dict.fromkeys(r["variant"] for t in trials for r in t["runs"]))
    for variant in variants:
        journals = [Path(report_dir) / r["journal"] for t in trials for r in t["runs"] if r["variant"] == variant]
        png = Path(report_dir) / f"{_slug(entry['id'])}-{variant}-repeats.png"
        with contextlib.suppress(LabError, OSError, ValueError):
            if overlay([j for j in journals if j.exists()], png, f"{entry['id']} ({variant}): {len(journals)} repeats"):
                out.append(png.name)
    return out


def overlay(journals: list[Path], out: Path, title: str) -> bool:
    """BackendConnectionErrors and RequestCount per interval: each repeat thin, their median bold, min-max shaded.
    False when no journal has a complete interval (nothing drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = []
    for path in journals:
        header, intervals, _events = read_series(path)
        if intervals:
            series.append((header, intervals))
    if not series:
        return False
    interval_s = series[0][0].get("interval_s", 1)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for ax, metric, color in (
        (axes[0], "BackendConnectionErrors", ERRORS_COLOR),
        (axes[1], "RequestCount", REQUESTS_COLOR),
    ):
        lines = []
        for _header, intervals in series:
            t0 = intervals[0]["t_start"]
            xs = [r["t_end"] - t0 for r in intervals]
            ys = [r["elb"]["metrics"][metric]["all"] for r in intervals]
            ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1)
            lines.append((xs, ys))
        n = min(len(ys) for _xs, ys in lines)
        at = [[ys[i] for _xs, ys in lines] for i in range(n)]
        xs = lines[0][0][:n]
        ax.fill_between(xs, [min(v) for v in at], [max(v) for v in at], color=color, alpha=0.15, linewidth=0)
        label = f"{metric}: median of {len(lines)}, min-max shaded"
        ax.plot(xs, [statistics.median(v) for v in at], color=color, linewidth=2.2, label=label)
        ax.set_ylabel(f"count per {interval_s:g} s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("seconds since the run started (end of each interval)")
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return True


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label).strip("-")
