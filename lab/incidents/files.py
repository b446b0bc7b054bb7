"""Read incident files (validated, errors with file:line:field) and build one from an imported CloudWatch series."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from lab.errors import InputError
from lab.incidents.cloudwatch import Series
from lab.models.incident import FIGURE_METRICS, Conditions, Figure, Incident
from lab.models.yamlio import read_yaml, validate_data


def load_incident(path: Path | str) -> Incident:
    return validate_data(Incident, read_yaml(Path(path)), str(path))


def figure_from_series(
    series: Series,
    figure_id: str,
    metric: str,
    statistic: str,
    period: int | None,
    conditions: Conditions,
    source: str,
) -> Figure:
    """A series figure from an import; the period is the export's own unless given (and must agree)."""
    if metric not in FIGURE_METRICS:
        raise InputError(f"--metric {metric}: unknown figure metric (known: {', '.join(FIGURE_METRICS)})")
    if series.statistic and series.statistic != statistic:
        raise InputError(f"--statistic {statistic}: the export holds {series.statistic}")
    seen = series.period
    if period is None:
        if seen not in (60, 300):
            raise InputError(f"{source}: cannot tell the period from the points (step {seen}); give --period 60 or 300")
        period = seen
    elif seen is not None and seen % period:
        raise InputError(f"--period {period}: the export's points are {seen} s apart")
    missing = series.missing(period)
    note = f"imported: {len(series.points)} points" + (f", periods without data: {missing}" if missing else "")
    if series.unit:
        note += f", unit {series.unit}"
    note += "".join(f"; {w}" for w in series.warnings)
    return Figure.model_validate(
        {
            "id": figure_id,
            "metric": metric,
            "statistic": statistic,
            "periods": [period],
            "series": [{"t": t, "v": v} for t, v in series.points],
            "conditions": conditions,
            "sources": [f"{source}" + (f" ({series.label})" if series.label else "")],
            "note": note,
        }
    )


def incident_yaml(incident: Incident) -> str:
    """The incident as YAML, in the file format (timestamps in ISO-8601 UTC)."""
    data: dict[str, Any] = incident.model_dump(mode="json", exclude_defaults=True)
    for f in data.get("figures", []):
        f.setdefault("statistic", "Sum")
        f.setdefault("periods", [60])
    out = io.StringIO()
    yaml = YAML()
    yaml.default_flow_style = None
    yaml.width = 120
    yaml.dump(data, out)
    return out.getvalue()
