"""Observation of a lab: the ELB's CloudWatch metrics, node counters and client outcomes, recorded per interval.

rec = Recorder(lab, "run.jsonl", interval=10, client=load_run)   # load_run: a lab.load.LoadRun, optional
rec.start(); ...; rec.event("fault applied", fault="drop-nodeport"); ...; rec.stop()
header, intervals, events = read_series("run.jsonl")
to_prometheus(header, intervals[-1])                               # text exposition of one interval
"""

from __future__ import annotations

from typing import Any

__all__ = ["Recorder", "read_series", "to_prometheus"]


def __getattr__(name: str) -> Any:
    # Lazy: backends import lab.metrics.elb while building a lab and need none of the recorder's imports.
    if name in ("Recorder", "read_series"):
        from lab.metrics import recorder

        return getattr(recorder, name)
    if name == "to_prometheus":
        from lab.metrics.exposition import to_prometheus

        return to_prometheus
    raise AttributeError(name)
