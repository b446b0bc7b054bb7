"""Benchmark: `lab report merge` of 100 shard files; optionally the wall time of the real quick matrix.

Run:  .venv/bin/python benchmarks/bench_matrix.py [--shards 100] [--runs 5]
      sudo .venv/bin/python benchmarks/bench_matrix.py --matrix   # + `lab matrix --all --quick --repeat 3`

The merge needs no lab: the every-scenario matrix (8 built-ins, repeat 13: 104 units) is planned for real
(scenarios loaded and hashed), its trials are synthetic (five observations with values, verdicts, two runs
each), and its results are cut into 100 shard files as `--shard I/100` would write them. Prints the
median and max over --runs of: reading the files, checking and judging them, writing the four reports.
Target: a merge of 100 shards < 5 s. `--matrix` also times the real quick matrix (root, ~15 min; run it on
a quiet machine). Not a test: figures go in README.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.scenarios import matrix, report  # noqa: E402
from lab.scenarios.matrix import Shard  # noqa: E402
from lab.scenarios.merge import merge, read_part  # noqa: E402


def synthetic_trial(loaded, opts, repeat, progress=lambda _m: None) -> dict:
    unit = f"{loaded.id}{opts.label}#{repeat}"
    x = zlib.crc32(unit.encode()) % 100 / 100
    phase = {"name": "steady", "kind": "steady", "t_start": 0.0, "t_end": 18.0, "faults": []}
    runs = [
        {"variant": v, "lab": "m-0000-3", "journal": f"{unit}-{v}.jsonl", "overrides": [], "phases": [phase]}
        for v in loaded.scenario.variant_names()
    ]
    return {
        "unit": unit,
        "repeat": repeat,
        "runs": runs,
        "status": "passed",
        "error": None,
        "lab_limited": False,
        "limited_reasons": [],
        "seconds": 40.0,
        "plots": [],
        "expectations": [
            {"text": f"expectation {i}", "measured": 50 + 10 * x + i, "passed": True, "why": ""} for i in range(5)
        ],
        "observations": {
            "O1": {"reproduced": x > 0.5, "figure": "f", "values": {"ratio": 3 + x, "floor_per_min": 54 + x}},
            "O2": {"reproduced": False, "figure": "f", "values": {"success_share": x, "made": 900, "errors": 100}},
            "O3": {"reproduced": x > 0.2, "figure": "f", "values": {"floor_per_min": 10 * x, "requests": 0}},
            "O4": {"reproduced": x > 0.9, "figure": "f", "values": {"timeout_ratio": x / 100, "p99_ms": 200 * x}},
            "O5": {"reproduced": None, "figure": "not a control scenario"},
        },
    }


def shard_files(root: Path, shards: int) -> list[Path]:
    """The every-scenario matrix, planned for real with synthetic trials, cut as `--shard I/N` would."""
    matrix.run_trial = synthetic_trial  # no lab: this measures the merge, not the runs
    repeat = -(-shards // len(matrix.builtin()))  # enough units for every shard to hold one
    whole = matrix.run_matrix([], use_all=True, report_dir=root / "whole", quick=True, repeat=repeat)
    plan = [u for e in whole["plan"] for u in e["units"]]
    paths = []
    for i in range(1, shards + 1):
        mine = set(Shard(i, shards).select(plan))
        part = dict(whole, shard={"index": i, "count": shards, "units": sorted(mine)})
        part["scenarios"] = []
        for entry in whole["scenarios"]:
            trials = [t for t in entry["trials"] if t["unit"] in mine]
            if trials:
                part["scenarios"].append(dict(entry, trials=trials, planned=[t["unit"] for t in trials]))
        path = root / f"shard-{i}" / "results.json"
        path.parent.mkdir()
        path.write_text(json.dumps(part, indent=2))
        paths.append(path)
    return paths


def bench_merge(shards: int, runs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-merge-"))
    try:
        paths = shard_files(root, shards)
        size = sum(p.stat().st_size for p in paths)
        print(f"{shards} shard files, {size / 1e6:.1f} MB of results.json")
        timings: dict[str, list[float]] = {"read": [], "check + judge": [], "write reports": [], "total": []}
        for n in range(runs):
            t0 = time.perf_counter()
            parts = [read_part(p) for p in paths]
            t1 = time.perf_counter()
            merged = merge(parts)
            t2 = time.perf_counter()
            report.write_all(merged, root / f"merged-{n}")
            t3 = time.perf_counter()
            for key, dt in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                timings[key].append(dt)
        units = sum(len(s["trials"]) for s in merged["scenarios"])
        print(f"merged {units} units of {len(merged['scenarios'])} scenarios over {runs} runs:")
        for key, ts in timings.items():
            print(f"  {key:14s} median {statistics.median(ts):6.3f} s   max {max(ts):6.3f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_matrix() -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    argv = [sys.executable, "-m", "lab.cli.__main__", "matrix", "--all", "--quick", "--repeat", "3"]
    t0 = time.monotonic()
    proc = subprocess.run([*argv, "--report", str(out)], cwd=REPO, check=False)
    print(f"lab matrix --all --quick --repeat 3: {time.monotonic() - t0:.0f} s (exit {proc.returncode}); {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--matrix", action="store_true", help="also time the real quick matrix (root, ~15 min)")
    args = parser.parse_args()
    bench_merge(args.shards, args.runs)
    if args.matrix:
        bench_matrix()


if __name__ == "__main__":
    main()
