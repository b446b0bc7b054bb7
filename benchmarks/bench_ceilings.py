"""Benchmark (not a test): this machine's ceilings - the highest rate through the lab that is not lab-limited.

For a new connection per request and for pooled connections, through the whole lab path (client -> ELB ->
NodePort -> kube-proxy -> pod) on a fresh default lab: a rate passes when no lab-limited flag fires
(lab.metrics.saturation: CPU, the generator's send lag, accept queues), >= 99.9% of requests are ok and
the latency p99 is under 50 ms. The search goes up by x1.4 until a rate fails, then bisects twice.
Also measures what the saturation sampling costs: CPU per sample, and that as a share of the machine
at the shortest recording interval (1 s).

    sudo .venv/bin/python benchmarks/bench_ceilings.py [--step-seconds 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ratesearch import find_ceiling  # noqa: E402
from lab import lifecycle  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.load import LoadRun, LoadSpec  # noqa: E402
from lab.metrics.saturation import CORES, SaturationSampler, SaturationWatch, assess, slice_lags  # noqa: E402

P99_LIMIT_MS = 50.0
CASES = [
    {"name": "per-request", "spec": {"connections": "per-request"}, "start": 400},
    {"name": "pooled (32 connections)", "spec": {"connections": "pooled", "pool": 32}, "start": 1000},
]


def step(lab: Lab, case: dict, rate: float, seconds: float) -> dict:
    watch = SaturationWatch(lab)
    watch.start()
    run = LoadRun(lab, LoadSpec(service="accounts", rate=rate, duration=seconds, **case["spec"]))
    run.start()
    try:
        d = run.wait().to_dict()
    finally:
        sections = watch.stop()
    verdict = assess(sections, lags=slice_lags(d["per_second"]))
    p99 = d["histograms_ms"]["latency"].get("p99_ms", float("inf"))
    return {
        "rate": rate,
        "passed": not verdict.lab_limited and d["ok_ratio"] >= 0.999 and p99 < P99_LIMIT_MS,
        "ok_ratio": d["ok_ratio"],
        "p50_ms": d["histograms_ms"]["latency"].get("p50_ms"),
        "p99_ms": p99,
        "send_lag_p99_ms": d["histograms_ms"]["send_lag"].get("p99_ms"),
        "busy_max": max((s["cpu"]["busy"] for s in sections), default=0.0),
        "lab_limited": verdict.limited_reasons,
        "load_average": round(os.getloadavg()[0], 2),
    }


def show(case: dict, r: dict) -> None:
    print(
        f"  {case['name']:<24} {r['rate']:>7.0f}/s  p99 {r['p99_ms']:>8.2f} ms  ok {r['ok_ratio']:.4f}  "
        f"lag p99 {r['send_lag_p99_ms'] or 0:>7.2f} ms  busy<= {r['busy_max']:.0%}  load {r['load_average']:.1f}  "
        f"{'pass' if r['passed'] else 'FAIL'}" + ("".join(f"\n      lab-limited: {x}" for x in r["lab_limited"])),
        flush=True,
    )


def search(lab: Lab, case: dict, seconds: float, ceiling: float) -> tuple[dict | None, list[dict]]:
    def attempt(rate: float) -> dict:
        r = step(lab, case, rate, seconds)
        show(case, r)
        return r

    return find_ceiling(attempt, case["start"], ceiling, rest=lambda: time.sleep(3))


def sampling_cost(lab: Lab, samples: int = 30) -> dict:
    """CPU per saturation sample (this thread's time: parsing /proc, HAProxy's stats, the fault store),
    measured under a modest load so the lab's processes are all there to be read."""
    run = LoadRun(lab, LoadSpec(service="accounts", rate=200, duration=samples * 0.2 + 2, connections="per-request"))
    run.start()
    try:
        sampler = SaturationSampler(lab)
        prev = sampler.take()
        t0 = time.thread_time()
        for _ in range(samples):
            time.sleep(0.2)
            cur = sampler.take()
            sampler.section(prev, cur, 1.0)
            prev = cur
        per_sample = (time.thread_time() - t0) / samples
    finally:
        run.wait()
    return {
        "cpu_ms_per_sample": round(per_sample * 1000, 2),
        "share_of_one_core_at_1s": round(per_sample, 4),
        "share_of_machine_at_1s": round(per_sample / CORES, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-seconds", type=float, default=8.0)
    ap.add_argument("--ceiling", type=float, default=20000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--only", choices=[c["name"].split()[0] for c in CASES], help="one case (re-run a disturbed one)")
    ap.add_argument("--no-sampling-cost", action="store_true", help="skip measuring the sampling's cost")
    args = ap.parse_args()
    cases = [c for c in CASES if args.only in (None, c["name"].split()[0])]
    print(f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine lowers the ceilings)")
    results: dict = {}
    name = f"bench{secrets.token_hex(2)}"
    lifecycle.up(lifecycle.prepare(REPO / "topologies" / "default.yaml", name, [], "netns", 1.0))
    try:
        lab = Lab.load(name)
        results["sampling"] = cost = sampling_cost(lab, 5 if args.no_sampling_cost else 30)
        print(
            f"saturation sampling: {cost['cpu_ms_per_sample']:.2f} ms CPU per sample = "
            f"{cost['share_of_machine_at_1s']:.2%} of this {CORES}-core machine at a 1 s interval "
            f"({cost['share_of_one_core_at_1s']:.2%} of one core)",
            flush=True,
        )
    finally:
        lifecycle.down(name)
    for case in cases:
        name = f"bench{secrets.token_hex(2)}"  # a fresh lab per case: an overloaded step leaves threads behind
        lifecycle.up(lifecycle.prepare(REPO / "topologies" / "default.yaml", name, [], "netns", 1.0))
        try:
            best, tried = search(Lab.load(name), case, args.step_seconds, args.ceiling)
            results[case["name"]] = {"best": best, "tried": tried}
        finally:
            lifecycle.down(name)
    print()
    print(f"{'case':<26} {'ceiling (not lab-limited, p99 < 50 ms)':>40} {'p50 ms':>8} {'p99 ms':>8}")
    for case in cases:
        b = results[case["name"]]["best"]
        if b is None:
            print(f"{case['name']:<26} {'(none passed)':>40}")
        else:
            print(f"{case['name']:<26} {b['rate']:>38.0f}/s {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
