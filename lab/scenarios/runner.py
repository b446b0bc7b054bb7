"""Run a scenario: per variant, bring a lab up, play the phases (load, faults at t for d), record, tear down.

One trial is one repeat of a scenario: every variant run once, then judged. Every run writes one JSON-lines
journal: the recorder's header and samples plus what was applied when (events) and, after evaluation, the
trial's verdicts. Faults are always reverted and the lab always removed, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import faults, lifecycle, toolbox
from lab.backends.base import Progress
from lab.errors import LabError
from lab.lab import Lab
from lab.load import LoadRun, LoadSpec
from lab.metrics.recorder import Recorder
from lab.metrics.saturation import assess_intervals
from lab.models.scenario import Phase
from lab.scenarios.aggregate import aggregate
from lab.scenarios.evaluate import evaluate
from lab.scenarios.loader import LoadedScenario
from lab.scenarios.metrics import latency_bands


@dataclass
class RunOptions:
    report_dir: Path
    time_scale: float = 1.0
    quick: bool = False
    extra_set: list[str] = field(default_factory=list)
    label: str = ""  # e.g. "[nodes_per_az=3]" when the matrix varies a setting
    lab_prefix: str = "s"
    backend: str = "netns"
    interval: float | None = None

    def scale_for(self, loaded: LoadedScenario) -> float:
        if self.quick and loaded.scenario.quick:
            return min(self.time_scale, loaded.scenario.quick.time_scale)
        return self.time_scale


def unit_id(entry_id: str, repeat: int) -> str:
    """The name of one trial, stable across machines: `hc-fanout[nodes_per_az=3]#2`."""
    return f"{entry_id}#{repeat}"


def scenario_entry(loaded: LoadedScenario, opts: RunOptions, repeats: list[int]) -> dict[str, Any]:
    """A scenario's entry for results.json before any trial: what it claims, and the trials planned."""
    scn = loaded.scenario
    sid = loaded.id + opts.label
    return {
        "id": sid,
        "scenario": loaded.id,
        "set": list(opts.extra_set),
        "file": str(loaded.path),
        "title": scn.title,
        "hypothesis": " ".join(scn.hypothesis.split()),
        "signature": " ".join(scn.signature.split()),
        "claims": list(scn.observations),
        "time_scale": opts.scale_for(loaded),
        "planned": [unit_id(sid, r) for r in repeats],
        "trials": [],
        "plots": [],
    }


def run_trial(loaded: LoadedScenario, opts: RunOptions, repeat: int, progress: Progress = lambda _m: None) -> dict:
    """One repeat: every variant of the scenario on a lab of its own, then its verdicts.

    `lab_limited` and `limited_reasons` say whether the lab itself was the bottleneck (set on a run by the
    saturation checks; the trial is limited if any of its runs is): such a trial does not vote.
    """
    scn = loaded.scenario
    scale = opts.scale_for(loaded)
    sid = loaded.id + opts.label
    started = time.time()
    trial: dict[str, Any] = {
        "unit": unit_id(sid, repeat),
        "repeat": repeat,
        "runs": [],
        "status": "error",
        "error": None,
        "lab_limited": False,
        "limited_reasons": [],
    }
    try:
        for variant in scn.variant_names():
            trial["runs"].append(_run_variant(loaded, variant, repeat, scale, opts, progress))
            for reason in trial["runs"][-1].get("limited_reasons", []):
                progress(f"{sid} #{repeat}: LAB-LIMITED ({variant}): {reason}")
        trial.update(evaluate(loaded, trial["runs"], scale))
        trial["status"] = "passed" if all(e["passed"] for e in trial["expectations"]) else "failed"
        for run in trial["runs"]:
            _append_verdicts(Path(opts.report_dir) / run["journal"], trial)
    except lifecycle.Interrupted:
        raise  # SIGTERM/SIGHUP: stop every repeat, as Ctrl-C does, not only this one
    except LabError as exc:
        trial["error"] = str(exc)
    finally:
        trial["seconds"] = round(time.time() - started, 1)
    # Lab-limited runs prove nothing about the hypothesis: the trial's verdicts must not count.
    reasons = [f"{r['variant']}: {why}" for r in trial["runs"] for why in r.get("limited_reasons", [])]
    trial.update(lab_limited=bool(reasons), limited_reasons=reasons)
    trial["plots"] = _plots(sid, trial, opts.report_dir)
    return trial


def run_scenario(
    loaded: LoadedScenario, opts: RunOptions, progress: Progress = lambda _m: None, repeats: int = 1
) -> dict[str, Any]:
    """Run a scenario `repeats` times and judge the trials together; returns its entry for results.json."""
    entry = scenario_entry(loaded, opts, list(range(1, repeats + 1)))
    for r in range(1, repeats + 1):
        entry["trials"].append(run_trial(loaded, opts, r, progress))
    entry.update(aggregate(entry))
    return entry


def _run_variant(
    loaded: LoadedScenario, variant: str, repeat: int, scale: float, opts: RunOptions, progress: Progress
) -> dict:
    scn = loaded.scenario
    sid = loaded.id + (f"-{variant}" if scn.variants else "") + f" #{repeat}"
    journal = f"{loaded.id}{_slug(opts.label)}-{variant}-r{repeat}.jsonl"
    name = f"{opts.lab_prefix}-{secrets.token_hex(2)}-{len(scn.phases)}"[:16]
    lab = lifecycle.prepare(
        loaded.topology_path, name, loaded.overrides(variant, opts.quick, opts.extra_set), opts.backend, scale
    )
    progress(f"{sid}: lab up")
    with lifecycle.signals_as_interrupts():
        lifecycle.up(lab)
        run: dict[str, Any] = {
            "variant": variant,
            "lab": name,
            "journal": journal,
            "overrides": loaded.overrides(variant, opts.quick, opts.extra_set),
            "instances": len(lab.topology.k8s_nodes),
            "elb_nodes": len(lab.topology.elb_nodes),
            "phases": [],
        }
        try:
            lab = Lab.load(name)
            interval = opts.interval or (1.0 if scale < 1 else 5.0)
            recorder = Recorder(lab, Path(opts.report_dir) / journal, interval=interval, note=f"scenario {sid}")
            recorder.start()
            try:
                recorder.event(
                    "scenario", id=sid, variant=variant, repeat=repeat, overrides=run["overrides"], time_scale=scale
                )
                for phase in scn.phases:
                    progress(f"{sid}: {phase.name} ({phase.kind}, {phase.duration * scale:g}s)")
                    run["phases"].append(_play_phase(lab, phase, scale, recorder))
            finally:
                recorder.stop()
                run["intervals"] = recorder.records
                run.update(assess_intervals(recorder.records).to_dict())  # lab_limited, limited_reasons
        finally:
            with contextlib.suppress(Exception):
                faults.revert(lab, reason="scenario end")
            progress(f"{sid}: lab down")
            lifecycle.down(name)
    return run


def _play_phase(lab: Lab, phase: Phase, scale: float, recorder: Recorder) -> dict[str, Any]:
    t0 = time.time()
    duration = phase.duration * scale
    recorder.event("phase start", phase=phase.name, kind=phase.kind, seconds=duration)
    load = None
    if phase.load is not None:
        w = phase.load
        spec = LoadSpec(
            service=w.service,
            rate=w.rate,
            duration=duration,
            rate_end=w.rate_end,
            connections=w.connections,
            pool=w.pool,
            connect_timeout=w.connect_timeout,
            timeout=w.timeout,
            method=w.method,
            payload=w.payload,
            via=w.via,
        )
        spec.validate()
        load = LoadRun(lab, spec)
        load.start()
        recorder.attach_client(load)
        recorder.event("load start", phase=phase.name, spec={k: v for k, v in vars(spec).items() if v is not None})
    schedule = []
    for step in phase.faults:
        schedule.append((step.at * scale, "apply", step))
        if step.for_ is not None:
            schedule.append((min(duration, (step.at + step.for_) * scale), "revert", step))
        elif step.until == "phase-end":
            schedule.append((duration, "revert", step))
    schedule.sort(key=lambda item: (item[0], item[1] == "apply"))
    applied: dict[int, int] = {}
    result: dict[str, Any] = {"name": phase.name, "kind": phase.kind, "t_start": t0, "faults": []}
    try:
        for at, action, step in schedule:
            _sleep_until(t0 + at)
            if action == "apply":
                view = faults.apply(lab, step.kind, step.target, step.params)["fault"]
                if step.for_ is not None or step.until == "phase-end":
                    applied[id(step)] = view["id"]  # else it stays until the scenario's final revert
                recorder.event(
                    "fault applied",
                    phase=phase.name,
                    id=view["id"],
                    kind=step.kind,
                    target=view.get("target"),
                    params=step.params,
                    engine=view.get("engine"),
                )
                result["faults"].append(
                    {"kind": step.kind, "target": view.get("target"), "at": round(time.time() - t0, 3)}
                )
            elif id(step) in applied:
                faults.revert(lab, [applied.pop(id(step))], reason="scenario step")
                recorder.event("fault reverted", phase=phase.name, kind=step.kind)
        _sleep_until(t0 + duration)
        if load is not None:
            result["load"] = load.wait(timeout=duration + 120).to_dict()
            result["load"].pop("per_second", None)
            # The histogram itself is large; keep the SYN-retransmit bands the metrics and report read.
            result["load"]["latency_bands"] = latency_bands(result["load"])
            result["load"].pop("hdr", None)
            load = None
    finally:
        if load is not None:
            with contextlib.suppress(Exception):
                load.stop(abort=True)
        for fid in list(applied.values()):
            with contextlib.suppress(Exception):
                faults.revert(lab, [fid], reason="phase end")
    result["t_end"] = time.time()
    result["conntrack"] = _conntrack_census(lab)
    recorder.event("phase end", phase=phase.name, conntrack=result["conntrack"])
    return result


CENSUS_MAX_NODES = 24  # ~0.06 s a node: a scenario's lab is small; a 500-node one would wait half a minute


def _conntrack_census(lab: Lab) -> dict[str, Any]:
    """What holds each node's conntrack table at a phase's end (the traffic's entries by state, ASSURED ones,
    the longest left): a verdict about errors that outlive their traffic (O3) can then say what kept them."""
    nodes = [n.name for n in lab.topology.k8s_nodes][:CENSUS_MAX_NODES]
    out: dict[str, Any] = {}
    for node in nodes:
        try:
            out[node] = toolbox.conntrack_census(lab.host(node))
        except LabError as e:  # evidence, not a verdict: a node that cannot say does not stop the run
            out[node] = {"error": str(e)}
    return out


def _sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_=" else "-" for c in label).strip("-").replace("=", "-")


def _append_verdicts(journal: Path, trial: dict[str, Any]) -> None:
    with open(journal, "a") as f:
        for e in trial.get("expectations", []):
            f.write(json.dumps({"type": "verdict", "t": round(time.time(), 3), **e}, default=str) + "\n")
        for o, obs in trial.get("observations", {}).items():
            f.write(json.dumps({"type": "observation", "observation": o, **obs}, default=str) + "\n")


def _plots(sid: str, trial: dict[str, Any], report_dir: Path) -> list[str]:
    from lab.metrics.plot import plot_run

    out = []
    for run in trial["runs"]:
        journal = Path(report_dir) / run["journal"]
        if not journal.exists():
            continue
        png = journal.with_suffix(".png")
        with contextlib.suppress(Exception):
            plot_run(journal, png, title=f"{sid} ({run['variant']}, repeat {trial['repeat']})")
            out.append(png.name)
    return out
