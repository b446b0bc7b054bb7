"""Read incident files (validated, errors with file:line:field) and build one from an imported CloudWatch series."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML

from lab.errors import InputError
from lab.incidents.cloudwatch import Series, read_export
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


def import_export(
    files: list[Path],
    output: Path,
    metric: str,
    conditions: dict[str, Any],
    statistic: str | None = None,
    period: int | None = None,
    result_id: str | None = None,
    figure_id: str = "imported",
    title: str = "Imported CloudWatch series",
) -> tuple[Figure, Series]:
    """Read a CloudWatch export, add it as a series figure to `output` (made if missing), write it back."""
    texts = []
    for f in files:
        try:
            texts.append(f.read_text())
        except OSError as exc:
            raise InputError(f"{f}: cannot read: {exc.strerror}") from None
    source = ", ".join(str(f) for f in files)
    series = read_export(texts, source, statistic, result_id)
    try:
        where = Conditions.model_validate(conditions)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        option = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
        raise InputError(f"{option} {err.get('input')!s}: {err['msg']}") from None
    figure = figure_from_series(
        series, figure_id, metric, statistic or series.statistic or "Sum", period, where, source
    )
    if output.exists():
        incident = load_incident(output)
        if any(f.id == figure.id for f in incident.figures):
            raise InputError(f"{output}: already has a figure '{figure.id}'; choose another --figure")
        incident = incident.model_copy(update={"figures": [*incident.figures, figure]})
    else:
        incident = Incident(title=title, figures=[figure])
    output.write_text(incident_yaml(incident))
    return figure, series
