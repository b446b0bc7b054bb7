"""A `lab load` session: one load run with its files (summary, per-second series), its live slice for
`lab top`, and optionally a recording of the ELB, node and client metrics around it.

Everything proportional to the run's length is written while the run goes (one line per second), so the
end of a run of any length only writes its summary.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.errors import InputError
from lab.lab import Lab
from lab.load.generator import LoadResult, LoadRun, LoadSpec
from lab.load.stats import ClientSlice
from lab.metrics.recorder import Recorder, check_interval
from lab.metrics.saturation import LAG_P99_MS, SaturationWatch, assess, slice_lags

COMPACT = {"separators": (",", ":")}


def per_second_path(summary: Path) -> Path:
    """Where the per-second series of a summary written to `summary` goes: result.json -> result.per-second.jsonl."""
    return summary.with_name(f"{summary.stem}.per-second.jsonl")


def live_path(lab: Lab, pid: int | None = None) -> Path:
    """The latest slice of a running `lab load` (one small file per process, replaced every second)."""
    return lab.state.path("run", f"load-{pid or os.getpid()}.json")


def live_clients(lab: Lab) -> dict[str, Any] | None:
    """The latest slice of every `lab load` running on this lab, merged into one (what `lab top` shows)."""
    latest = []
    for path in lab.state.path("run").glob("load-*.json"):
        pid = path.stem.split("-", 1)[1]
        if not pid.isdigit() or not Path(f"/proc/{pid}").exists():
            continue
        with contextlib.suppress(OSError, ValueError):
            latest.append(ClientSlice.from_dict(json.loads(path.read_text())))
    if not latest:
        return None
    return ClientSlice.merged(latest, min(s.t_start for s in latest), max(s.t_end for s in latest)).to_dict()


@dataclass
class LoadSession:
    """What `lab load` produced: the result, and the files written."""

    result: LoadResult
    interrupted: bool
    summary_file: Path | None = None
    per_second_file: Path | None = None
    record_file: Path | None = None
    saturation: dict[str, Any] | None = None  # lab_limited, limited_reasons (lab.metrics.saturation)

    def to_dict(self) -> dict[str, Any]:
        data = self.result.to_dict()
        data.update(self.saturation or {})
        if self.per_second_file is not None:
            data["per_second_file"] = self.per_second_file.name  # beside the summary
        return data


def check_output(path: Path, flag: str) -> None:
    """A file we can create, checked before the run (not after 20 minutes of load)."""
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory; give a file name such as result.json")
    if not path.parent.is_dir():
        raise InputError(f"{flag} {path}: no directory {path.parent}; create it first")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"{flag} {path}: cannot write in {path.parent}")


def run_session(
    lab: Lab,
    spec: LoadSpec,
    output: Path | None = None,
    record: Path | None = None,
    interval: float = 60.0,
    follow: Callable[[LoadRun], None] | None = None,
    flag: str = "--output",
) -> LoadSession:
    """Run the load to its end (Ctrl-C: a partial result, marked interrupted) and write its files.

    output: the summary's JSON file; the per-second series goes beside it as JSON Lines, line by line
    as the slices complete. follow(run) is called once the run has started (a progress view).
    """
    spec.validate()
    if record is not None:
        check_interval(interval)
        if record.is_dir():  # (its directory is made if missing, as the recorder always did)
            raise InputError(f"--record {record}: is a directory; give a file name such as run.jsonl")
    if output is not None:
        check_output(output, flag)
    # Slices stream to files: memory keeps a minute's worth for the progress view (and an interval's for
    # the recorder, which takes them once per interval).
    run = LoadRun(lab, spec, history=60 + int(interval if record else 0))
    recorder = (
        Recorder(lab, record, interval=interval, client=run, note=f"lab load {spec.service}", keep=False)
        if record
        else None
    )
    live = live_path(lab)
    series_path = per_second_path(output) if output is not None else None
    series = open(series_path, "w") if series_path is not None else None  # noqa: SIM115  (closed below)

    def on_slice(s: ClientSlice) -> None:
        tmp = live.with_suffix(".tmp")
        tmp.write_text(json.dumps(s.to_dict(with_histograms=True), **COMPACT))  # histograms: `lab top` merges
        tmp.replace(live)  # `lab top` reads a whole slice or the previous one, never half of one
        if series is not None:
            series.write(json.dumps(s.to_dict(), **COMPACT) + "\n")
            series.flush()

    run.on_slice(on_slice)
    watch = SaturationWatch(lab)  # is the lab itself the bottleneck? (judged with the send lag at the end)
    lags: list[dict[str, Any]] = []
    # Only the slices that lagged can flag the run: a long run keeps no per-second list.
    run.on_slice(lambda s: lags.extend(x for x in slice_lags([s.to_dict()]) if x["p99"] >= LAG_P99_MS))
    interrupted = False
    try:
        if recorder is not None:
            recorder.start()
        watch.start()
        run.start()
        if recorder is not None:
            recorder.event(
                "load started",
                service=spec.service,
                rate=spec.rate,
                rate_end=spec.rate_end,
                connections=spec.connections,
            )
        if follow is not None:
            follow(run)
        result = run.wait()
    except KeyboardInterrupt:
        interrupted = True
        result = run.stop(abort=True)
    finally:
        run.close()
        sections = watch.stop()
        for path in (live, live.with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                path.unlink()
        if series is not None:
            series.close()
        if recorder is not None:
            with contextlib.suppress(Exception):
                recorder.event("load ended", interrupted=interrupted)
            recorder.stop()
    session = LoadSession(result, interrupted, output, series_path, record, assess(sections, lags).to_dict())
    if output is not None:
        try:
            output.write_text(json.dumps(session.to_dict(), indent=2) + "\n")
        except OSError as exc:
            raise InputError(f"{flag} {output}: {exc.strerror}") from None
    return session
