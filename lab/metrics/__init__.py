"""Observation of a lab: the ELB's CloudWatch metrics, node counters and client outcomes, recorded per interval.

from lab.metrics.recorder import Recorder, read_series
rec = Recorder(lab, "run.jsonl", interval=10, client=load_run)    # load_run: a lab.load.LoadRun, optional
rec.start(); ...; rec.event("fault applied", fault="drop-nodeport"); ...; rec.stop()
header, intervals, events = read_series("run.jsonl")
lab.metrics.exposition.to_prometheus(header, intervals[-1])      # text exposition of one interval
"""
