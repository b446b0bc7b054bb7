"""Merge the results.json of a matrix's shards into one report, the same as the matrix run unsharded.

Parts of different matrices are refused (another commit, other settings, another shard count); what is
missing (a shard not given, units not run) is kept in the merged results, so the report shows it and the
merge does not pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.scenarios import report
from lab.scenarios.aggregate import aggregate
from lab.scenarios.plots import entry_plots

Part = tuple[str, dict[str, Any]]  # (where it was read, its results)
NEEDED = ("commit", "settings", "shard", "plan", "scenarios")


def read_part(path: Path) -> Part:
    """A results.json, or a report directory holding one."""
    file = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise InputError(f"{file}: cannot read: {exc.strerror}; give a report directory or its results.json") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{file}:{exc.lineno}: not JSON ({exc.msg}); is it a lab matrix results.json?") from None
    absent = [k for k in NEEDED if not isinstance(data, dict) or k not in data]
    if absent:
        raise InputError(
            f"{file}: no {', '.join(absent)}: not the results.json of a `lab matrix` run that can be merged; "
            "run the matrix again"
        )
    return str(file), data


def check_parts(parts: list[Part]) -> None:
    """Refuse, in one line, parts that are not shards of one and the same matrix."""
    if not parts:
        raise InputError("nothing to merge: give the shards' report directories (or their results.json files)")
    first, ref = parts[0]
    seen: dict[int, str] = {}
    for where, data in parts:
        if data["commit"] != ref["commit"]:
            raise InputError(
                f"{where}: made at commit {data['commit'][:12]}, {first} at {ref['commit'][:12]}: "
                "merge shards of one commit"
            )
        diff = _first_difference(ref["settings"], data["settings"])
        if diff:
            raise InputError(
                f"{where}: settings differ from {first}'s ({diff}): merge shards of one lab matrix command"
            )
        shard = data["shard"]
        if shard["count"] != ref["shard"]["count"]:
            raise InputError(
                f"{where}: shard {shard['index']}/{shard['count']} is not one of {first}'s "
                f"{ref['shard']['count']} shards: merge shards of one split"
            )
        if shard["index"] in seen:
            also = seen[shard["index"]]
            raise InputError(f"{where}: shard {shard['index']}/{shard['count']} given twice (also {also})")
        seen[shard["index"]] = where


def _first_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    for key in sorted(set(a) | set(b)):
        if key == "scenarios":
            for sid in sorted(set(a.get(key, {})) | set(b.get(key, {}))):
                if sid not in a.get(key, {}) or sid not in b.get(key, {}):
                    return f"scenario {sid} in one only"
                if a[key][sid] != b[key][sid]:
                    return f"scenario {sid}: its files differ"
        elif a.get(key) != b.get(key):
            return f"{key} {b.get(key)!r} vs {a.get(key)!r}"
    return None


def merge(parts: list[Part]) -> dict[str, Any]:
    """The merged results: every planned entry (missing ones too), judged over the trials of all parts."""
    check_parts(parts)
    _, ref = parts[0]
    count = ref["shard"]["count"]
    trials: dict[str, list[dict[str, Any]]] = {}
    meta: dict[str, dict[str, Any]] = {}
    units: dict[str, str] = {}
    for where, data in parts:
        for entry in data["scenarios"]:
            meta.setdefault(entry["id"], entry)
            for trial in entry.get("trials", []):
                if trial["unit"] in units:
                    raise InputError(f"{where}: run {trial['unit']} also in {units[trial['unit']]}: give each run once")
                units[trial["unit"]] = where
                trials.setdefault(entry["id"], []).append(trial)
    scenarios = []
    for planned in ref["plan"]:
        sid = planned["id"]
        base = meta.get(sid, {"id": sid, "title": "not run: its shards are missing", "hypothesis": "", "signature": ""})
        entry = {k: v for k, v in base.items() if k not in ("trials", "plots")}
        entry["trials"] = sorted(trials.get(sid, []), key=lambda t: t["repeat"])
        entry["planned"] = list(planned["units"])
        entry["seconds"] = round(sum(t.get("seconds", 0) for t in entry["trials"]), 1)
        entry["plots"] = []
        entry.update(aggregate(entry))
        scenarios.append(entry)
    present = {data["shard"]["index"] for _, data in parts}
    settings = ref["settings"]
    return {
        "started": min(data.get("started", 0) for _, data in parts),
        "seconds": max(data.get("seconds", 0) for _, data in parts),  # shards run side by side: the longest
        "quick": settings["quick"],
        "time_scale": settings["time_scale"],
        "machine": ", ".join(sorted({data.get("machine", "?") for _, data in parts})),
        "sets": settings["sets"],
        "backend": settings["backend"],
        "repeat": settings["repeat"],
        "commit": ref["commit"],
        "settings": settings,
        "shard": {"index": 0, "count": count, "units": sorted(units)},
        "plan": ref["plan"],
        "merged": [where for where, _ in parts],
        "missing_shards": [i for i in range(1, count + 1) if i not in present],
        "scenarios": scenarios,
    }


def complete(results: dict[str, Any]) -> bool:
    return not results.get("missing_shards") and not any(s.get("missing") for s in results["scenarios"])


def merge_reports(paths: list[Path], out: Path) -> dict[str, Any]:
    """Read the parts, merge them, bring their journals and plots into `out`, and write the reports there."""
    parts = [read_part(Path(p)) for p in paths]
    results = merge(parts)
    out.mkdir(parents=True, exist_ok=True)
    for where, data in parts:
        _copy_files(Path(where).parent, data, out)
    for entry in results["scenarios"]:
        entry["plots"] = entry_plots(entry, out)
    results["files"] = {k: str(v) for k, v in report.write_all(results, out).items()}
    return results


def _copy_files(src: Path, data: dict[str, Any], out: Path) -> None:
    names = [
        name
        for entry in data["scenarios"]
        for trial in entry.get("trials", [])
        for name in [r["journal"] for r in trial.get("runs", [])] + list(trial.get("plots", []))
    ]
    for name in names:
        source, target = src / name, out / name
        if source.exists() and source.resolve() != target.resolve():
            shutil.copyfile(source, target)
