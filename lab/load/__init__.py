"""Open-loop Thrift load from a lab host: schedule, worker processes, outcomes and HDR histograms.

The API the CLI and the scenario runner drive (see lab.load.generator):

    spec = LoadSpec(service="accounts", rate=500, duration=60, rate_end=2000, connections="pooled", pool=32)
    run = LoadRun(lab, spec)
    run.start()                      # worker processes enter the source host's namespace and begin
    for s in run.slices(): ...       # per-second client outcomes and latency while it runs
    result = run.wait()              # or run.stop() for a partial result; both leave nothing running
    result.to_dict()                 # JSON: classes, histograms, percentiles
"""

from __future__ import annotations

from typing import Any

__all__ = ["OUTCOMES", "ClientSlice", "LoadResult", "LoadRun", "LoadSpec", "run_load"]


def __getattr__(name: str) -> Any:
    # Lazy: a worker process (python -m lab.load.worker) must start fast and needs none of the lab model.
    if name in ("LoadResult", "LoadRun", "LoadSpec", "run_load"):
        from lab.load import generator

        return getattr(generator, name)
    if name == "OUTCOMES":
        from lab.load.outcomes import OUTCOMES

        return OUTCOMES
    if name == "ClientSlice":
        from lab.load.stats import ClientSlice

        return ClientSlice
    raise AttributeError(name)
