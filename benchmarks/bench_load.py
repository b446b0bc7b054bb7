"""Benchmark (not a test): the highest rate `lab load` sustains with p99 < 50 ms, and who uses the CPU there.

Four cases on one default lab: through the lab path (client -> ELB -> NodePort -> kube-proxy -> pod) and
straight to one pod from its node, each with pooled connections and with a new connection per request.
A rate passes when >= 99.9% of requests are ok, the achieved rate is >= 97% of the target and the latency
p99 (from the scheduled start: open loop) is under 50 ms. The search goes up by x1.4 until a rate fails,
then bisects twice. Prints a table, the ratio of lab path to direct, and the CPU seconds per 1,000
requests of each process kind at the best rate (what limits it).

    sudo .venv/bin/python benchmarks/bench_load.py [--step-seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ratesearch import find_ceiling  # noqa: E402
from lab import lifecycle  # noqa: E402
from lab.hosts import pids_in_netns  # noqa: E402
from lab.lab import Lab  # noqa: E402
from lab.load import LoadRun, LoadSpec  # noqa: E402

P99_LIMIT_MS = 50.0
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK


def machine_cpu() -> dict[str, float]:
    """Seconds of CPU the whole machine spent, by kind (/proc/stat): where kernel networking shows up."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    return {
        "user": (user + nice) / CLK,
        "system": system / CLK,
        "softirq": (irq + softirq) / CLK,
        "idle": (idle + iowait) / CLK,
    }


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load workers, once reaped
    return r.ru_utime + r.ru_stime


def process_groups(lab: Lab) -> dict[str, list[int]]:
    hosts = lab.hosts
    by_role: dict[str, list[str]] = {}
    for h in hosts.values():
        by_role.setdefault(h.role, []).append(h.netns)
    found = pids_in_netns([h.netns for h in hosts.values()])
    return {
        "haproxy (ELB nodes)": [p for ns in by_role.get("elb", []) for p in found.get(ns, [])],
        "thrift servers (pods)": [p for ns in by_role.get("pod", []) for p in found.get(ns, [])],
    }


def step(lab: Lab, case: dict, rate: float, seconds: float, startup_cpu: float = 0.0) -> dict:
    spec = LoadSpec(service="accounts", rate=rate, duration=seconds, **case["spec"])
    run = LoadRun(lab, spec)
    groups = process_groups(lab)
    gen0 = children_cpu()
    run.start()
    before = {k: cpu_seconds(v) for k, v in groups.items()}
    m0 = machine_cpu()
    result = run.wait()
    m1 = machine_cpu()
    used = {k: cpu_seconds(v) - before[k] for k, v in groups.items()}
    used["load generator"] = max(0.0, children_cpu() - gen0 - startup_cpu * run.n_workers)
    d = result.to_dict()
    n = max(1, d["requests"])
    p99 = d["histograms_ms"]["latency"].get("p99_ms", float("inf"))
    ok = d["ok_ratio"] >= 0.999 and d["requests"] >= 0.97 * d["scheduled"] and p99 < P99_LIMIT_MS
    machine = {k: m1[k] - m0[k] for k in m0}
    return {
        "rate": rate,
        "passed": ok,
        "achieved": d["achieved_rate"],
        "ok_ratio": d["ok_ratio"],
        "p50_ms": d["histograms_ms"]["latency"].get("p50_ms"),
        "p99_ms": p99,
        "errors": {k: v for k, v in d["outcomes"].items() if k != "ok" and v},
        "details": d["details"],
        "workers": d["workers"],
        # CPU per request, µs: per process kind (user + kernel time charged to it, which includes the packet
        # path its sends run through), and the whole machine by kind (other work on the machine included).
        "cpu_us_per_request": {k: round(v / n * 1e6) for k, v in used.items()},
        "machine_us_per_request": {k: round(v / n * 1e6) for k, v in machine.items() if k != "idle"},
        "machine_busy": round(1 - machine["idle"] / max(1e-9, sum(machine.values())), 2),
        "load_average": round(os.getloadavg()[0], 2),
    }


def settle(max_wait: float = 90.0, below: float = 3.0) -> None:
    """Wait (bounded) for the machine to calm down: the previous step's backlog, or other people's work."""
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > below and time.monotonic() < deadline:
        time.sleep(2)


def search(
    lab: Lab, case: dict, start: float, seconds: float, ceiling: float, startup: float
) -> tuple[dict | None, list[dict]]:
    def attempt(rate: float) -> dict:
        r = step(lab, case, rate, seconds, startup)
        print(
            f"  {case['name']:<28} {rate:>7.0f}/s  p99 {r['p99_ms']:>8.2f} ms  ok {r['ok_ratio']:.4f}  "
            f"{'pass' if r['passed'] else 'FAIL'} {r['errors'] or ''}",
            flush=True,
        )
        return r

    return find_ceiling(attempt, start, ceiling, rest=settle)


CASES = [
    {"name": "lab path, pooled", "spec": {"connections": "pooled", "pool": 32}, "start": 1000},
    {
        "name": "direct to a pod, pooled",
        "spec": {"connections": "pooled", "pool": 32, "via": "pod", "target": "accounts-0"},
        "start": 1000,
    },
    {"name": "lab path, per-request", "spec": {"connections": "per-request"}, "start": 400},
    {
        "name": "direct to a pod, per-request",
        "spec": {"connections": "per-request", "via": "pod", "target": "accounts-0"},
        "start": 400,
    },
    # Not a ratio case: both pods straight from a node, to see that the generator itself keeps up.
    {"name": "direct to both pods, per-request", "spec": {"connections": "per-request", "via": "pod"}, "start": 800},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-seconds", type=float, default=5.0)
    ap.add_argument("--ceiling", type=float, default=20000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} (figures are only meaningful on an idle machine)")
    results = {}
    for case in CASES:
        # A fresh lab per case: an overloaded step leaves threads and conntrack entries behind.
        settle()
        name = f"bench{secrets.token_hex(2)}"
        lifecycle.up(lifecycle.prepare(REPO / "topologies" / "default.yaml", name, [], "netns", 1.0))
        try:
            lab = Lab.load(name)
            g0 = children_cpu()
            probe = LoadRun(lab, LoadSpec(service="accounts", rate=1, duration=0.2))
            probe.start()
            probe.wait()
            startup = children_cpu() - g0  # a worker's interpreter start-up, taken off the generator's CPU
            best, tried = search(lab, case, case["start"], args.step_seconds, args.ceiling, startup)
            results[case["name"]] = {"best": best, "tried": tried}
        finally:
            lifecycle.down(name)
    print()
    print(f"{'case':<30} {'max rate, p99<50ms':>20} {'p50 ms':>8} {'p99 ms':>8}   CPU µs per request")
    for case_name, r in results.items():
        b = r["best"]
        if not b:
            print(f"{case_name:<30} {'(none passed)':>20}")
            continue
        cpu = ", ".join(f"{k} {v}" for k, v in b["cpu_us_per_request"].items())
        cpu += "; machine: " + ", ".join(f"{k} {v}" for k, v in b["machine_us_per_request"].items())
        cpu += f" (busy {b['machine_busy']:.0%}, load {b['load_average']})"
        print(f"{case_name:<30} {b['rate']:>18.0f}/s {b['p50_ms']:>8.2f} {b['p99_ms']:>8.2f}   {cpu}")
    for mode in ("pooled", "per-request"):
        lab_best = (results[f"lab path, {mode}"]["best"] or {}).get("rate", 0)
        direct = (results[f"direct to a pod, {mode}"]["best"] or {}).get("rate", 0)
        if direct:
            print(f"{mode}: lab path / direct = {lab_best / direct:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
