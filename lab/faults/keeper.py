"""Keeps a node's conntrack table full (conntrack-exhaustion mode=fill): tops up filler entries as others expire.

Runs inside the node's network namespace (started by the fault as a helper, stopped on revert). Without it
a "full" table frees a slot whenever one of the node's own entries expires (a health check's CLOSE entry
after 10 s, TIME_WAIT after 120 s), and new connections get through again.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.faults.ops import filler_lines

KEEPER_FIRST_INDEX = 1 << 22  # filler indices of the initial fill stay below this
PERIOD_S = 0.1


def read(name: str) -> int:
    return int(Path(f"/proc/sys/net/netfilter/{name}").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fault", type=int, required=True)
    parser.add_argument("--free", type=int, required=True, help="slots to leave in the table")
    args = parser.parse_args(argv)
    next_index = KEEPER_FIRST_INDEX
    print("ready", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"lab-keeper-{args.fault}-") as tmp:
        batch = Path(tmp) / "fill"
        while True:
            deficit = read("nf_conntrack_max") - args.free - read("nf_conntrack_count")
            if deficit > 0:
                batch.write_text(filler_lines(args.fault, deficit, start=next_index))
                subprocess.run(["conntrack", "-R", str(batch)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                next_index += deficit
            time.sleep(PERIOD_S)


if __name__ == "__main__":
    sys.exit(main())
