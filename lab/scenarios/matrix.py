"""The matrix: many scenarios (x settings), one after another, then the hypothesis x observation answer."""

from __future__ import annotations

import itertools
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.scenarios import report
from lab.scenarios.loader import LoadedScenario, builtin, expand_sweep
from lab.scenarios.runner import RunOptions, run_scenario

QUICK_SCALE = 0.1


def expand_sets(sets: list[str]) -> list[list[str]]:
    """`--set a=1,3 --set b=x` -> [[a=1, b=x], [a=3, b=x]] (the cross product)."""
    axes = []
    for item in sets:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=V1[,V2...], e.g. nodes_per_az=1,3")
        key, values = item.split("=", 1)
        choices = [v for v in values.split(",") if v != ""]
        if not choices:
            raise InputError(f"--set {item!r}: no values")
        axes.append([f"{key}={v}" for v in choices])
    return [list(combo) for combo in itertools.product(*axes)] if axes else [[]]


def load_all(files: list[str], use_all: bool, sets: list[list[str]]) -> list[LoadedScenario]:
    names = [str(p) for p in builtin()] if use_all or not files else files
    if not names:
        raise InputError("no scenarios: give files or --all (scenarios/ is empty)")
    loaded = []
    for name in names:
        for combo in sets:
            loaded += expand_sweep(name, combo)  # every scenario (and sweep point) validated before anything runs
    return loaded


def run_matrix(
    files: list[str],
    *,
    use_all: bool = False,
    sets: list[str] | None = None,
    report_dir: Path,
    quick: bool = False,
    time_scale: float | None = None,
    progress: Callable[[str], None] = lambda _m: None,
    backend: str = "netns",
) -> dict[str, Any]:
    sets = list(sets or [])
    combos = expand_sets(sets)
    scenarios = load_all(files, use_all, combos)
    scale = time_scale if time_scale is not None else (QUICK_SCALE if quick else 1.0)
    started = time.time()
    results: dict[str, Any] = {
        "started": started,
        "quick": quick,
        "time_scale": scale,
        "machine": f"{platform.node()} ({platform.machine()}, {len(_cpus())} cores)",
        "sets": sets,
        "backend": backend,
        "scenarios": [],
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    for i, loaded in enumerate(scenarios):
        combo = list(loaded.extra)
        label = f"[{','.join(combo + list(loaded.point))}]" if combo or loaded.point else ""
        progress(f"[{i + 1}/{len(scenarios)}] {loaded.id}{label}")
        opts = RunOptions(
            report_dir=report_dir,
            time_scale=scale,
            quick=quick,
            extra_set=combo,
            label=label,
            lab_prefix="m",
            backend=backend,
        )
        try:
            entry = run_scenario(loaded, opts, lambda m, i=i: progress(f"[{i + 1}/{len(scenarios)}] {m}"))
        finally:
            results["seconds"] = round(time.time() - started, 1)
        for run in entry["runs"]:
            run.pop("intervals", None)
        results["scenarios"].append(entry)
        report.write_all(results, report_dir)  # a partial report survives an interrupted matrix
    results["seconds"] = round(time.time() - started, 1)
    results["files"] = {k: str(v) for k, v in report.write_all(results, report_dir).items()}
    return results


def _cpus() -> list[int]:
    import os

    return sorted(os.sched_getaffinity(0))
