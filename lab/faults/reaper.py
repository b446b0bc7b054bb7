"""Collects a node's expired conntrack entries at the run's scaled pace (conntrack-exhaustion mode=ceiling, quick runs).

Runs inside the node's network namespace (started by the fault as a helper, stopped on revert). Since Linux 4.7
an entry that times out is not freed at once: it stays counted against the table until the kernel's garbage
collector passes (at most every 60 s when the table holds long-lived entries, as the fillers are) or a table
dump walks over it. The 60 s is one clock for the whole machine; it cannot be scaled per namespace. In a quick
run (x0.1) the load's TIME_WAIT entries expire after 12 s but could stay counted for up to 60 s more - past the
whole 36 s recovery - and keep the emulated table full: verdicts would then depend on when the collector
happened to pass. This helper walks the namespace's table every `period` seconds (60 s x the run's scale);
`conntrack -L` frees the expired entries it meets. The kernel filters the dump by mark, so a walk beside a
quarter million fillers prints nothing and takes ~0.06 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

KERNEL_GC_MAX_INTERVAL_S = 60.0  # nf_conntrack's GC_SCAN_INTERVAL_MAX
NO_ENTRY_HAS_IT = "0x1"  # a mark no entry carries: the walk frees what expired and lists nothing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fault", type=int, required=True)
    parser.add_argument("--period", type=float, required=True, help="seconds between walks")
    args = parser.parse_args(argv)
    print("ready", flush=True)
    while True:
        subprocess.run(
            ["conntrack", "-L", "--mark", NO_ENTRY_HAS_IT],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        time.sleep(max(0.5, args.period))


if __name__ == "__main__":
    sys.exit(main())
