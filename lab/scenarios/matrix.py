"""The matrix: scenarios (x settings) x repeats, one after another, then the hypothesis x observation answer.

The work is split in units (one scenario, one combination of --set values, one repeat). A shard I/N runs
every N-th unit of the sorted unit ids, starting at the I-th: the same units whatever the machine, so shards
run on N machines add up to the whole matrix (`lab report merge`). Each results.json records what a merge
must check: the commit, the settings (with the scenario and topology files' hashes), the shard and its units.
"""

from __future__ import annotations

import hashlib
import itertools
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.scenarios import report
from lab.scenarios.aggregate import aggregate
from lab.scenarios.loader import REPO, LoadedScenario, builtin, expand_sweep
from lab.scenarios.plots import entry_plots
from lab.scenarios.runner import RunOptions, run_trial, scenario_entry, unit_id

QUICK_SCALE = 0.1
MAX_REPEAT = 100
MAX_SHARDS = 100


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`2/4` -> Shard(2, 4)."""
        index, _, count = text.partition("/")
        if not (index.isdigit() and count.isdigit()) or not 1 <= int(index) <= int(count) <= MAX_SHARDS:
            raise InputError(f"--shard {text!r}: expected I/N with 1 <= I <= N <= {MAX_SHARDS}, e.g. --shard 2/4")
        return cls(int(index), int(count))

    def select(self, units: list[str]) -> list[str]:
        """Round-robin over the sorted unit ids: stable, and shards differ in size by one unit at most."""
        return [u for i, u in enumerate(sorted(units)) if i % self.count == self.index - 1]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


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


def load_all(files: list[str], use_all: bool, sets: list[list[str]]) -> list[tuple[LoadedScenario, list[str]]]:
    """Every scenario x set combination x sweep point, each validated before anything runs."""
    names = [str(p) for p in builtin()] if use_all or not files else files
    if not names:
        raise InputError("no scenarios: give files or --all (scenarios/ is empty)")
    # one per sweep point of each scenario (none declared: one)
    loaded = [(item, combo) for name in names for combo in sets for item in expand_sweep(name, combo)]
    seen: dict[str, Path] = {}
    for item, combo in loaded:
        key = item.id + label_of(combo + list(item.point))
        if key in seen:
            raise InputError(f"{item.path}: scenario '{item.id}' given twice (also {seen[key]}); give it once")
        seen[key] = item.path
    return loaded


def label_of(combo: list[str]) -> str:
    return f"[{','.join(combo)}]" if combo else ""


@dataclass(frozen=True)
class Unit:
    """One trial to run: a scenario (with its --set combination) and a repeat, and the entry it reports to."""

    id: str
    repeat: int
    loaded: LoadedScenario
    opts: RunOptions
    entry: dict[str, Any]


def plan_matrix(
    files: list[str],
    *,
    use_all: bool = False,
    sets: list[str] | None = None,
    report_dir: Path,
    quick: bool = False,
    time_scale: float | None = None,
    backend: str = "netns",
    repeat: int = 1,
    shard: Shard | None = None,
) -> tuple[dict[str, Any], list[Unit]]:
    """Everything validated and planned, nothing run: results.json's head (commit, settings, the whole plan,
    this shard, an entry per scenario it runs) and its units in running order, round by round."""
    if not 1 <= repeat <= MAX_REPEAT:
        raise InputError(f"--repeat {repeat}: must be between 1 and {MAX_REPEAT}")
    shard = shard or Shard(1, 1)
    sets = list(sets or [])
    scenarios = load_all(files, use_all, expand_sets(sets))
    scale = time_scale if time_scale is not None else (QUICK_SCALE if quick else 1.0)
    repeats = list(range(1, repeat + 1))
    planned = []
    for loaded, combo in scenarios:
        opts = RunOptions(
            report_dir=report_dir,
            time_scale=scale,
            quick=quick,
            extra_set=combo,
            label=label_of(combo + list(loaded.point)),
            lab_prefix="m",
            backend=backend,
        )
        planned.append((loaded, opts, scenario_entry(loaded, opts, repeats)))
    plan = [{"id": entry["id"], "units": entry["planned"]} for _, _, entry in planned]
    mine = shard.select([u for p in plan for u in p["units"]])
    for _, _, entry in planned:
        entry["planned"] = [u for u in entry["planned"] if u in mine]
        entry.update(aggregate(entry))
    results: dict[str, Any] = {
        "started": time.time(),
        "quick": quick,
        "time_scale": scale,
        "machine": f"{platform.node()} ({platform.machine()}, {len(_cpus())} cores)",
        "sets": sets,
        "backend": backend,
        "repeat": repeat,
        "commit": git_commit(),
        "settings": settings(scenarios, quick=quick, time_scale=scale, sets=sets, repeat=repeat, backend=backend),
        "shard": {"index": shard.index, "count": shard.count, "units": mine},
        "plan": plan,
        "scenarios": [entry for _, _, entry in planned if entry["planned"]],
    }
    units = [
        Unit(unit_id(entry["id"], r), r, loaded, opts, entry)
        for r in repeats
        for loaded, opts, entry in planned
        if unit_id(entry["id"], r) in entry["planned"]
    ]
    return results, units


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
    repeat: int = 1,
    shard: Shard | None = None,
) -> dict[str, Any]:
    """Run the matrix (or one shard of it) and write its reports. Repeats go round by round (every scenario
    once, then again), so a partial report covers every scenario and a drift of the machine spreads out."""
    results, units = plan_matrix(
        files,
        use_all=use_all,
        sets=sets,
        report_dir=report_dir,
        quick=quick,
        time_scale=time_scale,
        backend=backend,
        repeat=repeat,
        shard=shard,
    )
    report_dir.mkdir(parents=True, exist_ok=True)
    started = results["started"]
    for n, unit in enumerate(units, 1):
        where = f"[{n}/{len(units)}] {unit.entry['id']}" + (f" #{unit.repeat}" if repeat > 1 else "")
        progress(where)
        try:
            trial = run_trial(unit.loaded, unit.opts, unit.repeat, lambda m, w=where: progress(f"{w}: {m}"))
        finally:
            results["seconds"] = round(time.time() - started, 1)
        for run in trial["runs"]:
            run.pop("intervals", None)  # in the journal; results.json keeps the verdicts
        unit.entry["trials"].append(trial)
        unit.entry.update(aggregate(unit.entry))
        report.write_all(results, report_dir)  # a partial report survives an interrupted matrix
    for entry in results["scenarios"]:
        entry["plots"] = entry_plots(entry, report_dir)
    results["seconds"] = round(time.time() - started, 1)
    results["files"] = {k: str(v) for k, v in report.write_all(results, report_dir).items()}
    return results


def settings(
    scenarios: list[tuple[LoadedScenario, list[str]]],
    *,
    quick: bool,
    time_scale: float,
    sets: list[str],
    repeat: int,
    backend: str,
) -> dict[str, Any]:
    """Everything that must be equal for two shards to be parts of one matrix (machines may differ)."""
    files = {}
    for loaded, _combo in scenarios:
        # Names and contents, not full paths: the same files checked out elsewhere are the same matrix.
        files[loaded.id] = {
            "file": loaded.path.name,
            "sha256": _sha256(loaded.path),
            "topology": loaded.topology_path.name,
            "topology_sha256": _sha256(loaded.topology_path),
        }
    return {
        "quick": quick,
        "time_scale": time_scale,
        "sets": list(sets),
        "repeat": repeat,
        "backend": backend,
        "scenarios": files,
    }


def git_commit() -> str:
    """The lab's commit (`git rev-parse HEAD`), or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else "unknown"


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cpus() -> list[int]:
    import os

    return sorted(os.sched_getaffinity(0))
