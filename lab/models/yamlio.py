"""Load YAML into validated models, turning every problem into one line that names file, line and field."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from lab.errors import InputError

M = TypeVar("M", bound=BaseModel)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def parse_yaml(text: str, source: str) -> Any:
    try:
        return _yaml().load(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    except Exception as exc:  # ruamel raises a few unmarked errors (duplicate keys, bad tokens)
        raise InputError(f"{source}: invalid YAML: {exc}".splitlines()[0]) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_yaml(text, str(path))


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node along `loc` that the YAML document has."""
    line = None
    node = data
    for part in loc:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except (KeyError, TypeError):  # a value set with --set has no position in the file
            break
    if line is None and isinstance(data, CommentedMap | CommentedSeq):
        line = data.lc.line + 1
    return line


def _strip_model_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union member / function validator tags into loc; users know only their keys
    return tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))


def parse_dotted(path: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for part in re.split(r"\.|(?=\[)", path):
        if not part:
            continue
        if part.startswith("[") and part.endswith("]"):
            out.append(int(part[1:-1]))
        else:
            out.append(part)
    return tuple(out)


def explain(exc: ValidationError, data: Any, source: str) -> str:
    """One line for the first validation error."""
    err = exc.errors(include_url=False)[0]
    loc = _strip_model_loc(tuple(err["loc"]))
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Cross-field checks name the field they are about: "@elb.listeners[0].service: ..."
    if msg.startswith("@") and ": " in msg:
        path, msg = msg[1:].split(": ", 1)
        loc = loc + parse_dotted(path)
    line = line_of(data, loc)
    where = f"{source}:{line}" if line else source
    field = dotted(loc)
    if not loc:
        return f"{where}: {msg}"
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        return f"{where}: unknown field '{dotted(parent) + '.' if parent else ''}{loc[-1]}'; check the spelling"
    if err["type"] == "missing":
        return f"{where}: {field}: required field is missing"
    shown = "" if err["type"].startswith(("value_error", "assertion")) else _got(err.get("input"))
    return f"{where}: {field}: {msg}{shown}"


def _got(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        return ""
    return f" (got {value!r})"


def to_plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): to_plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [to_plain(v) for v in data]
    return data


def apply_overrides(data: Any, overrides: list[str], source: str) -> Any:
    """Apply `a.b.c=value` overrides (value parsed as YAML); list items are picked by index or by name."""
    if data is None:
        data = CommentedMap()
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. elb.cross_zone=true")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"--set {item!r}: empty key")
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
        node = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, key)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if part not in node or node[part] is None:
                        node[part] = CommentedMap()
                    node = node[part]
            else:
                raise InputError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping or list in {source}")
    return data


def _list_index(node: list, part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(node) <= idx < len(node):
            return idx
        raise InputError(f"--set {key}: index {idx} out of range (the list has {len(node)} items)")
    for idx, elem in enumerate(node):
        if isinstance(elem, dict) and elem.get("name") == part:
            return idx
    raise InputError(f"--set {key}: no list item named '{part}'")


def load_model(model: type[M], path: Path, overrides: list[str] | None = None) -> M:
    data = read_yaml(path)
    return validate_data(model, data, str(path), overrides)


def validate_data(model: type[M], data: Any, source: str, overrides: list[str] | None = None) -> M:
    if overrides:
        data = apply_overrides(data, overrides, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(to_plain(data))
    except ValidationError as exc:
        raise InputError(explain(exc, data, source)) from None
