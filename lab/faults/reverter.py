"""The --duration reverter: a detached process that reverts one fault when its time is up, then exits.

It exits early when the fault is reverted by hand or the lab goes away; if it dies, the next fault command
reverts the expired fault instead.
"""

from __future__ import annotations

import argparse
import sys
import time

from lab.errors import LabError
from lab.faults.model import INJECTED
from lab.faults.store import FaultStore
from lab.state import LabState


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.faults.reverter")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--fault", type=int, required=True)
    args = parser.parse_args(argv)
    state = LabState(args.lab)
    store = FaultStore(state)
    while True:
        if not state.exists():
            return 0
        rec = next((r for r in store.load() if r.id == args.fault), None)
        if rec is None or rec.state != INJECTED or not rec.expires_at:
            return 0
        left = rec.expires_at - time.time()
        if left <= 0:
            break
        time.sleep(min(left, 0.5))
    from lab.faults.engine import revert
    from lab.lab import Lab

    try:
        revert(Lab.load(args.lab), [args.fault], reason="duration")
    except LabError as exc:
        print(f"fault {args.fault}: {exc}", file=sys.stderr)
        return 1
    print(f"fault {args.fault}: reverted after its duration", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
