"""What a fault is, as data: its record (id, kind, target, params, state, steps) and parameter types. No I/O."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, ValidationError, WithJsonSchema

from lab.errors import InputError
from lab.models.common import Form, Strict, form_of, format_duration

INJECTED = "Injected"
NOT_INJECTED = "Not Injected"
APPLYING = "Applying"  # written before the first change: a crash leaves this, and revert undoes every step

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)\s*$", re.I)
_RATE_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}
MAX_LIST = 100
TRUE_WORDS = ("on", "true", "yes", "1")
FALSE_WORDS = ("off", "false", "no", "0")


def parse_fraction(value: Any) -> float:
    """A probability from "1%", "0.5%" or 0.01 (a bare number is a fraction, 0..1)."""
    frac: float | None = None
    if isinstance(value, str):
        if m := _PERCENT.match(value):
            frac = float(m.group(1)) / 100
        elif m := _FRACTION.match(value):
            frac = float(m.group(1))
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        frac = float(value)
    if frac is None:
        raise ValueError(f"expected a percentage such as 1% or a fraction such as 0.01, got {value!r}")
    if not 0 <= frac <= 1:
        raise ValueError(f"must be from 0% to 100%, got {value!r}")
    return frac


def parse_rate(value: Any) -> int:
    """Bits per second from "10mbit", "512kbit", "1gbit" or "2mbps" (bytes), or a whole number of bits."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _RATE.match(value) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"expected a rate such as 10mbit or 512kbit, got {value!r}")
    return int(float(m.group(1)) * _RATE_BITS[m.group(2).lower()])


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else ""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected on/off, true/false or 1/0, got {value!r}")


def parse_list(value: Any) -> list[str]:
    if isinstance(value, list):
        items = value
    elif isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    else:
        raise ValueError(f"expected names separated by commas (or a YAML list), got {value!r}")
    if len(items) > MAX_LIST or not all(isinstance(v, str) and len(v) <= 40 for v in items):
        raise ValueError(f"expected at most {MAX_LIST} names of up to 40 characters each")
    return list(items)


def FractionIn(low: float, high: float) -> Any:  # noqa: N802  (used as a type)
    """A probability from low to high, written 1% or 0.01."""

    def check(value: Any) -> float:
        frac = parse_fraction(value)
        if not low <= frac <= high:
            raise ValueError(f"must be from {low * 100:g}% to {high * 100:g}%, got {value!r}")
        return frac

    return Annotated[
        float,
        BeforeValidator(check),
        Form("percentage", f"from {low * 100:g}% to {high * 100:g}%"),
        WithJsonSchema(
            {
                "anyOf": [{"type": "number", "minimum": low, "maximum": high}, {"type": "string"}],
                "description": f"a percentage such as 1% or a fraction such as 0.01; "
                f"from {low * 100:g}% to {high * 100:g}%",
            }
        ),
    ]


def RateIn(low: int, high: int) -> Any:  # noqa: N802
    """Bits per second from low to high, written 10mbit, 512kbit, 2mbps (bytes) or as bits."""

    def check(value: Any) -> int:
        bits = parse_rate(value)
        if not low <= bits <= high:
            raise ValueError(f"must be from {show_rate(low)} to {show_rate(high)}, got {value!r}")
        return bits

    return Annotated[
        int,
        BeforeValidator(check),
        Form("rate", f"from {show_rate(low)} to {show_rate(high)}"),
        WithJsonSchema(
            {
                "anyOf": [{"type": "integer", "minimum": low, "maximum": high}, {"type": "string"}],
                "description": f"bits per second, or a string such as 10mbit, 512kbit, 2mbps (bytes); "
                f"from {show_rate(low)} to {show_rate(high)}",
            }
        ),
    ]


def show_rate(bits: float) -> str:
    for unit, size in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= size:
            return f"{bits / size:g}{unit}"
    return f"{bits:g}bit"


Fraction = FractionIn(0.0, 1.0)
Flag = Annotated[
    bool,
    BeforeValidator(parse_bool),
    Form("on/off", "on/off, true/false, yes/no or 1/0"),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string", "enum": [*TRUE_WORDS, *FALSE_WORDS]}]}),
]
Names = Annotated[
    list[str],
    BeforeValidator(parse_list),
    Form("names", f"separated by commas (or a YAML list), at most {MAX_LIST}"),
]


class Params(Strict):
    """Base of every kind's parameters: strict (a typo is an error), validated from key=value strings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def param_docs(model: type[Params]) -> list[dict[str, str]]:
    """Each parameter of a kind in words (form, allowed values, default, meaning): `lab fault list` and
    docs/faults.md are made from this, so neither can drift from the declarations."""
    out = []
    for name, info in model.model_fields.items():
        form = form_of(info.annotation, info.metadata)
        default = info.get_default(call_default_factory=True)
        out.append(
            {
                "name": name,
                "form": form.kind,
                "allowed": form.allowed,
                "default": "" if default is None else form.show(default),
                "help": info.description or "",
            }
        )
    return out


def parse_params(kind: str, model: type[Params], pairs: list[str] | dict[str, Any]) -> Params:
    """key=value strings (or a dict) -> the kind's validated parameters; one clear line on error."""
    values: dict[str, Any] = {}
    if isinstance(pairs, dict):
        values = dict(pairs)
    else:
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise InputError(f"fault {kind}: parameter {pair!r} is not KEY=VALUE (e.g. delay=50ms)")
            values[key.strip().replace("-", "_")] = value.strip()
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(model.model_fields)
        if err["type"] == "extra_forbidden":
            raise InputError(f"fault {kind}: unknown parameter '{where}'; parameters: {allowed}") from None
        msg = err["msg"].removeprefix("Value error, ")
        if not where:  # a check across parameters
            raise InputError(f"fault {kind}: {msg} (see `lab fault list`)") from None
        given = values.get(where)
        shown = f"={given}" if given is not None else ""
        if shown:  # the value is shown once, as given
            msg = msg.split(", got ")[0]
        raise InputError(f"fault {kind}: parameter {where}{shown}: {msg} (see `lab fault list`)") from None


def show_params(params: dict[str, Any]) -> str:
    """Parameters as key=value text for people (durations and fractions in their usual units)."""
    out = []
    for key, value in params.items():
        if value is None:
            continue
        if key in ("delay", "jitter", "timeout", "accept_delay") and isinstance(value, int | float):
            value = format_duration(value)
        elif key in ("loss", "rate") and isinstance(value, float):
            value = f"{value * 100:g}%"
        elif isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, list):
            value = ",".join(value)
        out.append(f"{key}={value}")
    return " ".join(out)


@dataclass
class Step:
    """One reversible change on one host (or lab process); `prior` is captured before the change is made."""

    op: str
    host: str
    args: dict[str, Any]
    prior: dict[str, Any] | None = None
    done: bool = False
    result: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        return cls(**data)


@dataclass
class FaultRecord:
    id: int
    kind: str
    target: str
    params: dict[str, Any]
    state: str
    applied_at: float | None
    steps: list[Step]
    duration: float | None = None
    expires_at: float | None = None
    reverted_at: float | None = None
    reverted_by: str | None = None
    engine: str | None = None  # which mechanism ran (e.g. nfqueue or netem for delays)
    reverter_pid: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [s.to_json() for s in self.steps]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRecord:
        data = dict(data)
        data["steps"] = [Step.from_json(s) for s in data.get("steps", [])]
        return cls(**data)

    @property
    def active(self) -> bool:
        return self.state in (INJECTED, APPLYING)
