"""Benchmark: apply and revert time of every fault kind, and a conntrack fill of 262,144 entries.

Run as root:  .venv/bin/python benchmarks/bench_faults.py [--runs 5]
Brings up its own lab (default topology; a legacy one is not needed: the kinds' steps are the same), times the
library calls `lab.faults.apply` / `revert` (what `lab fault apply` does after Python has started; add ~0.3 s
per CLI call), prints medians and maxima, tears the lab down. Targets: apply and revert < 1 s each per fault;
the fill of 262,144 entries < 10 s. Not a test: figures go in docs/faults.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import faults, lifecycle  # noqa: E402
from lab.faults.ops import ct_count  # noqa: E402
from lab.lab import Lab  # noqa: E402

CASES = [
    ("cross-az", None, ["delay=50ms", "jitter=5ms"]),
    ("link", "node-a1", ["delay=20ms", "loss=1%", "bandwidth=50mbit"]),
    ("link", "peering", ["partition=on"]),
    ("conntrack-exhaustion", "node-b1", ["mode=fill", "free=1000"]),
    ("conntrack-exhaustion", "node-b1", ["mode=ceiling", "max=5000"]),
    ("healthcheck-misroute", "node-a1", ["variant=first-listener"]),
    ("healthcheck-misroute", None, ["variant=local-no-endpoints"]),
    ("healthcheck-misroute", "node-a1", ["variant=wrong-port"]),
    ("conntrack-invalid", "accounts", ["rate=1%"]),
    ("stale-endpoints", "accounts-0", ["fresh=node-b1"]),
    ("syn-backlog", "accounts-0", ["backlog=1"]),
    ("elb-idle-timeout", "elb-a1", ["timeout=5s"]),
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; re-run when it is high)")
    lab = lifecycle.prepare(REPO / "topologies" / "default.yaml", f"bf{os.getpid() % 10000}")
    lifecycle.up(lab)
    try:
        lab = Lab.load(lab.name)
        print(f"{'kind':22} {'target':11} {'params':36} {'apply med/max':>15} {'revert med/max':>16}")
        for kind, target, params in CASES:
            applies, reverts = [], []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                fid = faults.apply(lab, kind, target, params)["fault"]["id"]
                t1 = time.perf_counter()
                faults.revert(lab, [fid])
                t2 = time.perf_counter()
                applies.append(t1 - t0)
                reverts.append(t2 - t1)
            apply_s = f"{statistics.median(applies):6.3f}/{max(applies):.3f}s"
            revert_s = f"{statistics.median(reverts):7.3f}/{max(reverts):.3f}s"
            print(f"{kind:22} {target or 'all':11} {' '.join(params):36} {apply_s} {revert_s}")
        node = lab.host("node-c1")
        fills, flushes = [], []
        for _ in range(max(1, args.runs // 2)):
            count, limit = ct_count(node)
            t0 = time.perf_counter()
            fid = faults.apply(lab, "conntrack-exhaustion", "node-c1", ["mode=fill", "free=0"])["fault"]["id"]
            t1 = time.perf_counter()
            full, _ = ct_count(node)
            faults.revert(lab, [fid])
            fills.append(t1 - t0)
            flushes.append(time.perf_counter() - t1)
        print(
            f"conntrack fill of {limit - count:,} entries (to {full:,}/{limit:,}): "
            f"{statistics.median(fills):.2f} s median, {max(fills):.2f} s max; "
            f"revert (filtered flush) {statistics.median(flushes):.2f} s"
        )
    finally:
        lifecycle.down(lab.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
