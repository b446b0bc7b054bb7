"""Read CloudWatch exports into time series: get-metric-statistics and get-metric-data JSON (AWS CLI), CSV. Pure.

- `aws cloudwatch get-metric-statistics` prints {"Label", "Datapoints": [{"Timestamp", "<Statistic>", "Unit"}]}:
  datapoints in no guaranteed order, only the statistics asked for.
- `aws cloudwatch get-metric-data` prints {"MetricDataResults": [{"Id", "Label", "Timestamps", "Values",
  "StatusCode"}], "Messages", "NextToken"?}: Timestamps[i] belongs to Values[i], newest first by default;
  a period with no data is simply absent; PartialData means more pages (NextToken) hold the rest.
- CSV (docs/fit.md): a header `timestamp,value[,unit]`, one row per period, ISO-8601 with a time zone (Z or
  +00:00) or epoch seconds.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lab.errors import InputError

STATISTICS = ("Sum", "Average", "Minimum", "Maximum", "SampleCount")


@dataclass(frozen=True)
class Series:
    """One metric's points, oldest first, one per period (gaps where CloudWatch had no data)."""

    label: str
    points: list[tuple[datetime, float]]
    statistic: str | None = None
    unit: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def period(self) -> int | None:
        """The smallest step between points (s): the export's period when at least two points are adjacent."""
        steps = [(b[0] - a[0]).total_seconds() for a, b in zip(self.points, self.points[1:], strict=False)]
        return int(min(steps)) if steps else None

    def missing(self, period: int) -> int:
        """Periods between the first and last point that have no point."""
        if len(self.points) < 2:
            return 0
        span = (self.points[-1][0] - self.points[0][0]).total_seconds()
        return int(round(span / period)) + 1 - len(self.points)


def parse_timestamp(text: object, where: str) -> datetime:
    if isinstance(text, int | float) and not isinstance(text, bool) and math.isfinite(text):
        return datetime.fromtimestamp(float(text), UTC)
    if isinstance(text, str):
        raw = text.strip()
        if raw.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(raw), UTC)
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise InputError(f"{where}: timestamp {text!r} is not ISO-8601 (e.g. 2017-06-01T12:00:00Z)") from None
        if ts.tzinfo is None:
            raise InputError(f"{where}: timestamp {text!r} has no time zone; add Z or +00:00 (CloudWatch uses UTC)")
        return ts.astimezone(UTC)
    raise InputError(f"{where}: expected a timestamp, got {text!r}")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise InputError(f"{where}: {value!r} is not a finite number")
    return out


def _ordered(points: list[tuple[datetime, float]], where: str) -> list[tuple[datetime, float]]:
    points = sorted(points, key=lambda p: p[0])
    for a, b in zip(points, points[1:], strict=False):
        if a[0] == b[0]:
            raise InputError(f"{where}: two points at {a[0].isoformat()}; is one export pasted twice?")
    return points


def parse_json(text: str, source: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source}:{exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object as the AWS CLI prints it")
    return data


def from_metric_statistics(data: dict, source: str, statistic: str | None = None) -> Series:
    """The output of `aws cloudwatch get-metric-statistics ... --output json`."""
    points = data.get("Datapoints")
    if not isinstance(points, list):
        raise InputError(f"{source}: no Datapoints list; is this `aws cloudwatch get-metric-statistics` output?")
    present = sorted({k for p in points if isinstance(p, dict) for k in p if k in STATISTICS})
    if statistic is None:
        if len(present) != 1:
            choices = ", ".join(present) or "none"
            raise InputError(f"{source}: the datapoints hold {choices}; choose one with --statistic")
        statistic = present[0]
    out, units = [], set()
    for i, p in enumerate(points):
        where = f"{source}: Datapoints[{i}]"
        if not isinstance(p, dict) or "Timestamp" not in p:
            raise InputError(f"{where}: expected an object with Timestamp")
        if statistic not in p:
            raise InputError(f"{where}: no {statistic} (the export holds {', '.join(present) or 'none'})")
        out.append((parse_timestamp(p["Timestamp"], where), _number(p[statistic], f"{where}.{statistic}")))
        if p.get("Unit"):
            units.add(str(p["Unit"]))
    if len(units) > 1:
        raise InputError(f"{source}: datapoints in several units ({', '.join(sorted(units))})")
    label = str(data.get("Label") or "")
    return Series(label, _ordered(out, source), statistic, units.pop() if units else None)


def from_metric_data(pages: list[dict], source: str, result_id: str | None = None) -> Series:
    """The output of `aws cloudwatch get-metric-data` (one page or several, NextToken after NextToken)."""
    results: dict[str, list[dict]] = {}
    messages: list[str] = []
    for n, page in enumerate(pages):
        items = page.get("MetricDataResults")
        if not isinstance(items, list):
            raise InputError(f"{source}: no MetricDataResults; is this `aws cloudwatch get-metric-data` output?")
        for r in items:
            if not isinstance(r, dict) or "Id" not in r:
                raise InputError(f"{source}: page {n + 1}: a MetricDataResults entry has no Id")
            results.setdefault(str(r["Id"]), []).append(r)
        messages += [str(m.get("Value", m)) for m in page.get("Messages") or [] if isinstance(m, dict)]
    if not results:
        raise InputError(f"{source}: MetricDataResults is empty")
    if result_id is None:
        if len(results) > 1:
            raise InputError(f"{source}: several results ({', '.join(results)}); choose one with --id")
        result_id = next(iter(results))
    if result_id not in results:
        raise InputError(f"{source}: no result with Id '{result_id}' (ids: {', '.join(results)})")
    points, label, warnings = [], "", []
    for part in results[result_id]:
        stamps, values = part.get("Timestamps") or [], part.get("Values") or []
        if len(stamps) != len(values):
            raise InputError(f"{source}: result '{result_id}' has {len(stamps)} Timestamps but {len(values)} Values")
        status = part.get("StatusCode", "Complete")
        if status in ("InternalError", "Forbidden"):
            raise InputError(f"{source}: result '{result_id}' has StatusCode {status}; {'; '.join(messages)}")
        label = label or str(part.get("Label") or "")
        for i, (ts, v) in enumerate(zip(stamps, values, strict=True)):
            where = f"{source}: {result_id}.Timestamps[{i}]"
            points.append((parse_timestamp(ts, where), _number(v, f"{source}: {result_id}.Values[{i}]")))
    if any(p.get("StatusCode") == "PartialData" for p in results[result_id]) and not any(
        p.get("StatusCode") == "Complete" for p in results[result_id]
    ):
        warnings.append("StatusCode PartialData: more pages (NextToken) hold the rest; pass every page")
    return Series(label or result_id, _ordered(points, source), None, None, warnings)


def from_csv(text: str, source: str) -> Series:
    """`timestamp,value[,unit]` with a header line; blank lines and lines starting with # are skipped."""
    rows = [r for r in csv.reader(io.StringIO(text)) if r and not r[0].lstrip().startswith("#")]
    if not rows:
        raise InputError(f"{source}: empty CSV; expected a header timestamp,value[,unit] and one row per period")
    header = [c.strip().lower() for c in rows[0]]
    if header[:2] != ["timestamp", "value"] or len(header) > 3 or (len(header) == 3 and header[2] != "unit"):
        raise InputError(
            f"{source}:1: header must be timestamp,value or timestamp,value,unit (got {','.join(rows[0])})"
        )
    points, units = [], set()
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise InputError(f"{source}:{n}: expected {len(header)} columns, got {len(row)}")
        points.append((parse_timestamp(row[0], f"{source}:{n}"), _number(row[1].strip(), f"{source}:{n}")))
        if len(row) == 3 and row[2].strip():
            units.add(row[2].strip())
    if len(units) > 1:
        raise InputError(f"{source}: rows in several units ({', '.join(sorted(units))})")
    return Series("", _ordered(points, source), None, units.pop() if units else None)


def read_export(texts: list[str], source: str, statistic: str | None = None, result_id: str | None = None) -> Series:
    """Any of the three formats, told apart by their content; several texts only as pages of get-metric-data."""
    if not texts:
        raise InputError(f"{source}: nothing to import")
    if texts[0].lstrip().startswith("{"):
        pages = [parse_json(t, source) for t in texts]
        if "MetricDataResults" in pages[0]:
            return from_metric_data(pages, source, result_id)
        if len(pages) > 1:
            raise InputError(f"{source}: several files are only for get-metric-data pages")
        return from_metric_statistics(pages[0], source, statistic)
    if len(texts) > 1:
        raise InputError(f"{source}: several files are only for get-metric-data pages")
    return from_csv(texts[0], source)
