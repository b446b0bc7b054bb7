"""The rate search the load benchmarks share (a helper, not a benchmark): up by x1.4 from a start rate until a
rate fails, then bisect twice between the last pass and that failure."""

from __future__ import annotations

import time
from collections.abc import Callable


def find_ceiling(
    attempt: Callable[[float], dict], start: float, ceiling: float, rest: Callable[[], None], drain_s: float = 10.0
) -> tuple[dict | None, list[dict]]:
    """(the best passing result, every result) of `attempt(rate)`, whose result says "passed"; `rest()` runs
    between attempts (a settle wait); after a failure the search also waits `drain_s`, as an overloaded pod (a
    thread per connection) takes a while to drain."""
    tried: list[dict] = []
    best, bad = None, None
    rate = start
    while rate <= ceiling:
        r = attempt(rate)
        tried.append(r)
        if not r["passed"]:
            bad = rate
            break
        best, rate = r, round(rate * 1.4)
        rest()
    lo = best["rate"] if best else 0
    for _ in range(2 if bad else 0):
        mid = round((lo + bad) / 2)
        if mid in (lo, bad):
            break
        time.sleep(drain_s)
        rest()
        r = attempt(mid)
        tried.append(r)
        if r["passed"]:
            lo, best = mid, r
        else:
            bad = mid
    return best, tried
