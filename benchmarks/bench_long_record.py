"""Benchmark: two hours of recorded data from a real short recording: the final write, the report and the plot.

Run as root:  .venv/bin/python benchmarks/bench_long_record.py [--minutes 5] [--hours 2] [--name lr]
1. Records a real load (`lab.metrics.session.run_session`, the function `lab load --record FILE -i 1
   --json --output FILE` calls): accounts at 300/s, per-request, one-second intervals, on the lab NAME
   (brought up with the default topology if it is not up, and then removed).
2. Replays it to HOURS: the recording's interval lines and the load's one-second client slices (with their
   HDR histograms) are repeated, times shifted, through the same code a run uses: each slice is merged from
   its parts, added to the run's total and written as a per-second line; each interval line is written
   as the recorder writes it.
3. Times what a user waits for at the end and after: the final write (the run's summary from its total,
   the summary JSON and the recording's end line), the report (the recording read back and every
   scenario metric's statistics over the whole run) and the plot (`lab plot`, the real command); prints
   the files' sizes, and what the summaries of all slices cost the old way (hdrh's bucket walk).
Not a test: figures go in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.errors import LabError  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.load.generator import LoadResult, LoadSpec  # noqa: E402
from lab.load.stats import HISTOGRAMS, PERCENTILES, ClientSlice, Tally  # noqa: E402
from lab.metrics.recorder import read_series  # noqa: E402
from lab.metrics.session import COMPACT, per_second_path, run_session  # noqa: E402
from lab.scenarios.metrics import CATALOG, statistic  # noqa: E402

LAB = [sys.executable, "-m", "lab.cli"]


def record_real(lab: Lab, minutes: float, out: Path) -> tuple[Path, list[ClientSlice], LoadResult]:
    spec = LoadSpec(service="accounts", rate=300, duration=minutes * 60, connections="per-request")
    rec = out / "real.jsonl"
    slices: list[ClientSlice] = []  # every slice, histograms included (the run keeps only the last minute)
    session = run_session(
        lab, spec, output=out / "real.json", record=rec, interval=1.0, follow=lambda run: slices.extend(run.slices())
    )
    return rec, slices, session.result


def old_summary_seconds(slices: list[ClientSlice], total_slices: int) -> float:
    """What summarising every slice cost before: hdrh's get_mean_value and percentiles walk every bucket."""
    sample = slices[: min(20, len(slices))]
    t0 = time.perf_counter()
    for s in sample:
        for name in HISTOGRAMS:
            h = s.histogram(name)
            if h.get_total_count():
                h.get_mean_value()
                for p in PERCENTILES:
                    h.get_value_at_percentile(p)
    return (time.perf_counter() - t0) / len(sample) * total_slices


def replay(rec: Path, slices: list[ClientSlice], result: LoadResult, hours: float, out: Path) -> dict[str, float]:
    header, intervals, events = read_series(rec)
    span = intervals[-1]["t_end"] - intervals[0]["t_start"]
    copies = max(1, round(hours * 3600 / span))
    long_rec = out / "two-hours.jsonl"
    summary = out / "two-hours.json"
    figures: dict[str, float] = {}

    # The run: interval lines as the recorder writes them, one-second slices through the collector's path.
    per_slice = 0.0
    tally = Tally()
    replayed: list[ClientSlice] = []
    with open(long_rec, "w") as f, open(per_second_path(summary), "w") as series:
        f.write(json.dumps(header, **COMPACT) + "\n")
        seq = 0
        for k in range(copies):
            shift = k * span
            for r in intervals:
                f.write(
                    json.dumps(
                        {**r, "seq": seq, "t_start": r["t_start"] + shift, "t_end": r["t_end"] + shift}, **COMPACT
                    )
                    + "\n"
                )
                seq += 1
            for e in events:
                f.write(json.dumps({**e, "t": e["t"] + shift}, **COMPACT) + "\n")
            for s in slices:
                t0 = time.perf_counter()
                parts = [
                    ClientSlice.from_dict(
                        {
                            "outcomes": s.outcomes,
                            "details": s.details,
                            "scheduled": s.scheduled,
                            "histograms": s.histograms,
                        }
                    )
                ]
                done = ClientSlice.merged(parts, s.t_start + shift, s.t_end + shift)
                tally.add(done)
                series.write(json.dumps(done.to_dict(), **COMPACT) + "\n")
                replayed.append(done)
                per_slice += time.perf_counter() - t0
        figures["run: collector time per slice (ms)"] = per_slice / len(replayed) * 1000

        # The end: what remains after the last request (the summary, the recording's end line).
        t0 = time.perf_counter()
        ended = result.started + copies * span
        total = tally.slice(result.started, ended)
        long_result = replace(result, ended=ended, total=total, slices=replayed)
        data = {**long_result.to_dict(), "per_second_file": per_second_path(summary).name}
        summary.write_text(json.dumps(data, indent=2) + "\n")
        f.write(json.dumps({"type": "end", "t": ended, "intervals": seq}, **COMPACT) + "\n")
        figures["final write (s)"] = time.perf_counter() - t0

    # The report: the recording read back, every scenario metric's statistics over the whole run.
    t0 = time.perf_counter()
    header, intervals, events = read_series(long_rec)
    t_start, t_end = intervals[0]["t_start"], intervals[-1]["t_end"]
    values = {
        (m.name, stat): statistic(m, stat, intervals, t_start, t_end, header.get("time_scale", 1.0), data)
        for m in CATALOG.values()
        for stat in m.stats
    }
    figures["report (s)"] = time.perf_counter() - t0
    figures["report: statistics computed"] = len(values)

    t0 = time.perf_counter()
    plot = subprocess.run(
        [*LAB, "plot", str(long_rec), "-o", str(out / "two-hours.png")], capture_output=True, text=True
    )
    figures["plot, lab plot command (s)"] = time.perf_counter() - t0
    if plot.returncode != 0:
        raise SystemExit(f"lab plot failed: {plot.stderr}")

    figures["intervals"] = len(intervals)
    figures["slices"] = len(replayed)
    figures["recording (MB)"] = long_rec.stat().st_size / 1e6
    figures["summary JSON (kB)"] = summary.stat().st_size / 1e3
    figures["per-second JSON Lines (MB)"] = per_second_path(summary).stat().st_size / 1e6
    figures["plot PNG (kB)"] = (out / "two-hours.png").stat().st_size / 1e3
    figures["before: summarising every slice at the end (s, estimated)"] = old_summary_seconds(slices, len(replayed))
    return figures


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the real recording")
    parser.add_argument("--hours", type=float, default=2.0, help="length it is replayed to")
    parser.add_argument("--name", default="lr", help="lab name (brought up if not up, then removed)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the files (default: a temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    ours = False
    try:
        lab = Lab.load(args.name)
    except LabError:
        subprocess.run([*LAB, "up", "-n", args.name], check=True, capture_output=True)
        lab, ours = Lab.load(args.name), True
    out = args.out or Path(tempfile.mkdtemp(prefix="lab-long-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores); lab {lab.name}; files in {out}")
    try:
        t0 = time.time()
        rec, slices, result = record_real(lab, args.minutes, out)
        print(
            f"real recording: {args.minutes:g} min in {time.time() - t0:.0f} s, {result.requests:,} requests, "
            f"ok {result.ok_ratio * 100:.3f}%, {len(slices)} slices, {rec.stat().st_size / 1e3:.0f} kB"
        )
    finally:
        if ours:
            subprocess.run([*LAB, "down", "-n", lab.name], capture_output=True)
    for what, value in replay(rec, slices, result, args.hours, out).items():
        print(f"{what:58} {value:10.3f}" if isinstance(value, float) else f"{what:58} {value:10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
