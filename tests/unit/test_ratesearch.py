"""The benchmarks' rate search: up by x1.4 until a failure, then two bisections."""

from benchmarks.ratesearch import find_ceiling


def search(limit: float, start: float = 100, ceiling: float = 10_000):
    def attempt(rate: float) -> dict:
        return {"rate": rate, "passed": rate <= limit}

    return find_ceiling(attempt, start, ceiling, rest=lambda: None, drain_s=0)


def test_climbs_then_bisects_between_the_last_pass_and_the_first_failure():
    best, tried = search(limit=300)
    assert [r["rate"] for r in tried] == [100, 140, 196, 274, 384, 329, 302]
    assert best == {"rate": 274, "passed": True}  # 302 and 329 failed: the best pass stays 274


def test_a_failing_start_bisects_down_and_a_ceiling_stops_the_climb():
    best, tried = search(limit=40)
    assert [r["rate"] for r in tried] == [100, 50, 25] and best["rate"] == 25  # bisects below the first failure
    best, tried = search(limit=10)
    assert best is None and len(tried) == 3  # nothing passes
    best, tried = search(limit=1e9, ceiling=200)
    assert best["rate"] == 196 and len(tried) == 3  # stops at the ceiling without a failure: no bisection
