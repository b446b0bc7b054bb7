"""Shared pieces of the declarative models: strict base class, bounded numbers and durations, names.

Every number a file can set has a range (minimum and maximum, published in the JSON Schema) and is checked
the same way whether the file writes `10s` or `10`; NaN and infinities are not numbers, and a YAML
true/false is not a number either (Python's bool is an int: pydantic's lax mode would take `true` as 1).
"""

from __future__ import annotations

import math
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
DURATION_PATTERN = r"^\d+(\.\d+)?(ms|s|m|h)?$"
WEEK = 7 * 86400.0  # the longest any duration may be unless its field says less


def shown(value: Any) -> str:
    """A value as the user wrote it in YAML (true, .nan, a quoted string), short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return {math.inf: ".inf", -math.inf: "-.inf"}.get(value, ".nan")
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict | list) or value is None:
        return {dict: "a mapping", list: "a list", type(None): "nothing"}[type(value)]
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: Any) -> float:
    """Seconds from 10, 2.5, "250ms", "10s", "2m" or "1h" (a bare number means seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"expected a duration such as 10s, 250ms or 2m, got {shown(value)}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {shown(value)}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT[match.group(2)]
    raise ValueError(f"expected a duration such as 10s, 250ms or 2m, got {shown(value)}")


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def _range_text(low: float, high: float, show: Any = str) -> str:
    return f"from {show(low)} to {show(high)}"


def check_int(value: Any, low: int, high: int, text: bool = False) -> int:
    """A whole number from low to high; `text`: also its decimal digits as a string (key=value parameters)."""
    if text and isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number {_range_text(low, high)}, got {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"must be {_range_text(low, high)}, got {shown(value)}")
    return int(value)


def check_number(value: Any, low: float, high: float, text: bool = False) -> float:
    """A finite number from low to high; `text`: also its decimal form as a string (key=value parameters)."""
    if text and isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,15}(\.\d{1,15})?\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a number {_range_text(low, high, _g)}, got {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"must be {_range_text(low, high, _g)}, got {shown(value)}")
    return float(value)


def check_duration(value: Any, low: float, high: float) -> float:
    seconds = parse_duration(value)
    if not low <= seconds <= high:
        raise ValueError(f"must be {_range_text(low, high, format_duration)}, got {shown(value)}")
    return seconds


def _g(number: float) -> str:
    return f"{number:g}"


@dataclass(frozen=True)
class Form:
    """How a value is written and which values are allowed, in words: one source for `lab fault list`,
    the generated docs (lab.docsgen) and the JSON Schema's descriptions."""

    kind: str  # e.g. "whole number", "duration", "percentage"
    allowed: str  # e.g. "from 1s to 4000s"

    def show(self, value: Any) -> str:
        """A default value as the user would write it."""
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "on" if value else "off"
        if self.kind == "duration":
            return format_duration(float(value))
        if self.kind == "percentage":
            return f"{value * 100:g}%"
        if isinstance(value, list | dict) and not value:
            return "none"
        if isinstance(value, list):
            return ",".join(map(str, value))
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def Int(low: int, high: int, text: bool = False) -> Any:  # noqa: N802  (used as a type: `replicas: Int(0, 100)`)
    """The type of a whole number from low to high (bounds in the JSON Schema)."""
    return Annotated[
        int,
        annotated_types.Interval(ge=low, le=high),
        BeforeValidator(lambda v: check_int(v, low, high, text)),
        Form("whole number", _range_text(low, high)),
    ]


def Float(low: float, high: float, text: bool = False) -> Any:  # noqa: N802
    """The type of a finite number from low to high (bounds in the JSON Schema)."""
    return Annotated[
        float,
        annotated_types.Interval(ge=low, le=high),
        BeforeValidator(lambda v: check_number(v, low, high, text)),
        Form("number", _range_text(low, high, _g)),
    ]


def DurationIn(low: float, high: float) -> Any:  # noqa: N802
    """The type of a duration from low to high seconds, written `10s`, `250ms`, `2m`, `1h` or as seconds."""
    return Annotated[
        float,
        Form("duration", _range_text(low, high, format_duration)),
        BeforeValidator(lambda v: check_duration(v, low, high)),
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "number", "minimum": low, "maximum": high},
                    {"type": "string", "pattern": DURATION_PATTERN},
                ],
                "description": f"seconds, or a string such as 250ms, 10s, 2m, 1h; "
                f"{_range_text(low, high, format_duration)}",
            }
        ),
    ]


# Any duration a field does not bound more tightly: up to a week.
Duration = DurationIn(0.0, WEEK)


def check_name(value: Any, longest: int = 24) -> str:
    if isinstance(value, str) and re.fullmatch(rf"[a-z]([a-z0-9-]{{0,{longest - 2}}}[a-z0-9])?", value):
        return value
    raise ValueError(
        f"a name is 1-{longest} lowercase letters, digits or '-', starting with a letter and not ending with '-'; "
        f"got {shown(value)}"
    )


def _name_type(longest: int, what: str) -> Any:
    return Annotated[
        str,
        Field(pattern=rf"^[a-z]([a-z0-9-]{{0,{longest - 2}}}[a-z0-9])?$", description=what),
        BeforeValidator(lambda v: check_name(v, longest)),
        Form("name", what),
    ]


# A DNS label short enough to sit inside namespace and interface names.
Name = _name_type(24, "1-24 lowercase letters, digits or '-', starting with a letter, not ending with '-'")
# A lab's name is part of every namespace name (lab.<lab>.<host>) and of the state directory.
LAB_NAME_LONGEST = 16
LabName = _name_type(
    LAB_NAME_LONGEST, "1-16 lowercase letters, digits or '-', starting with a letter, not ending with '-'"
)


def Text(longest: int) -> Any:  # noqa: N802
    """Free text of at most `longest` characters."""
    return Annotated[str, Field(max_length=longest), Form("text", f"up to {longest} characters")]


def form_of(annotation: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> Form:
    """The Form of a field from its annotation (and the metadata pydantic took out of it)."""
    for meta in metadata:
        if isinstance(meta, Form):
            return meta
    origin = get_origin(annotation)
    if origin is Annotated and get_origin(get_args(annotation)[0]) is list:  # list bounds sit outside the list
        base, *meta = get_args(annotation)
        return form_of(base, [*metadata, *meta])
    if origin is Annotated:
        base, *meta = get_args(annotation)
        return form_of(base, meta)
    if origin in (Union, types.UnionType):
        forms = [form_of(arg) for arg in get_args(annotation) if arg is not type(None)]
        return forms[0] if len(forms) == 1 else Form(" or ".join(f.kind for f in forms), "")
    if origin is Literal:
        return Form("one of", ", ".join(map(str, get_args(annotation))))
    if origin is list:
        (inner,) = get_args(annotation) or (Any,)
        item = form_of(inner)
        longest = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
        each = f"each {item.kind} {item.allowed}".strip()
        return Form("list", f"at most {longest} items, {each}" if longest is not None else each)
    if origin is dict or annotation is dict:
        return Form("mapping", "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return Form("mapping", "(fields below)")
    if annotation is bool:
        return Form("true/false", "true or false")
    if annotation is str:
        return Form("text", "")
    return Form(getattr(annotation, "__name__", str(annotation)), "")


class Strict(BaseModel):
    """Unknown fields are errors (a typo must not silently fall back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
