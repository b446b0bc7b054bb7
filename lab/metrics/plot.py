"""Plots of a recorded run: the ELB graphs the seed team read (BackendConnectionErrors vs RequestCount) and
the client's latency percentiles and failed requests, on one time axis. matplotlib, Agg (no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.metrics.recorder import read_series

# CloudWatch's default palette for the seed's graph: RequestCount blue, BackendConnectionErrors purple.
REQUESTS_COLOR = "#1f77b4"
ERRORS_COLOR = "#9467bd"


def plot_run(path: Path | str, out: Path | str, title: str | None = None) -> dict[str, Any]:
    """Draw the run at `path` into `out` (.png, .svg or .pdf); returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, intervals, events = read_series(path)
    if not intervals:
        raise InputError(f"{path}: the run has no complete interval yet; record for at least one --interval")
    t0 = intervals[0]["t_start"]
    span = intervals[-1]["t_end"] - t0
    unit, div = ("minutes", 60.0) if span >= 180 else ("seconds", 1.0)
    minutes = [(r["t_end"] - t0) / div for r in intervals]
    requests = [r["elb"]["metrics"]["RequestCount"]["all"] for r in intervals]
    errors = [r["elb"]["metrics"]["BackendConnectionErrors"]["all"] for r in intervals]
    clients = [r.get("client") for r in intervals]
    has_client = any(c and c.get("requests") for c in clients)

    rows = 3 if has_client else 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), sharex=True, squeeze=False)
    ax = axes[0][0]
    ax.plot(minutes, requests, color=REQUESTS_COLOR, marker=".", label="RequestCount (Sum)")
    ax.plot(minutes, errors, color=ERRORS_COLOR, marker=".", label="BackendConnectionErrors (Sum)")
    ax.set_ylabel(f"count per {header['interval_s']:g} s")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    scale = header.get("time_scale", 1)
    ax.set_title(
        title
        or f"lab '{header['lab']}' ({header['topology']}, kube-proxy {header['kube_proxy']}, "
        f"cross-zone {'on' if header['cross_zone'] else 'off'}"
        + (f", ELB timers x{scale:g}" if scale != 1 else "")
        + ")"
    )
    for ev in events:
        for row in axes:
            row[0].axvline((ev["t"] - t0) / div, color="grey", linestyle=":", linewidth=1)
        ax.annotate(ev["what"], ((ev["t"] - t0) / div, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top")

    if has_client:
        lat = axes[1][0]
        for key, style in (("p50_ms", "-"), ("p90_ms", "--"), ("p99_ms", "-."), ("p99.9_ms", ":")):
            ys = [(c or {}).get("latency", {}).get(key) for c in clients]
            lat.plot(minutes, [y if y is not None else float("nan") for y in ys], style, label=f"latency {key[:-3]}")
        lat.set_ylabel("client latency (ms)")
        lat.set_yscale("log")
        lat.legend(loc="upper left", fontsize=8)
        lat.grid(alpha=0.3, which="both")
        bad = axes[2][0]
        classes = sorted({k for c in clients if c for k, v in c["outcomes"].items() if k != "ok" and v})
        for k in classes:
            bad.plot(minutes, [(c or {}).get("outcomes", {}).get(k, 0) for c in clients], marker=".", label=k)
        bad.plot(
            minutes, [(c or {}).get("outcomes", {}).get("ok", 0) for c in clients], color="green", alpha=0.4, label="ok"
        )
        bad.set_ylabel("client requests")
        bad.set_ylim(bottom=0)
        bad.legend(loc="upper left", fontsize=8)
        bad.grid(alpha=0.3)
    axes[-1][0].set_xlabel(f"{unit} since the run started (end of each interval)")
    fig.tight_layout()
    out = Path(out)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot write {out}: {exc}") from None
    finally:
        plt.close(fig)
    return {"out": str(out), "intervals": len(intervals), "client": has_client, "events": len(events)}
