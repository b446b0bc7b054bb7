"""Load YAML into validated models, turning every problem into one line that names file, line and field."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLWarning
from ruamel.yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, ScalarEvent
from ruamel.yaml.reader import ReaderError

from lab.errors import InputError

M = TypeVar("M", bound=BaseModel)

# Limits checked before anything is built from a file: the built-in files are under 4 KiB and expand to fewer
# than 400 values, so these leave room for any hand-written lab while refusing an alias bomb in milliseconds
# (nine aliases of nine aliases, eight levels deep, is 377 bytes that expand to 43 million values).
MAX_FILE_BYTES = 256 * 1024
MAX_VALUES = 20_000  # scalars, mappings and lists, each alias counted as everything it stands for
MAX_DEPTH = 32


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def _check_shape(text: str, source: str) -> None:
    """Count what the document expands to, from parser events (no value is built), and refuse a bomb."""
    sizes: dict[str, int] = {}  # anchor -> how many values its node expands to
    open_nodes: list[list[Any]] = []  # [anchor, values so far] of each mapping or list being read
    total = 0
    for event in _yaml().parse(io.StringIO(text)):
        if isinstance(event, CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) > MAX_DEPTH:
                raise InputError(
                    f"{source}:{event.start_mark.line + 1}: nested more than {MAX_DEPTH} levels deep; "
                    "topology and scenario files need a handful"
                )
            size = 1
        elif isinstance(event, CollectionEndEvent):
            anchor, size = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = size
            if open_nodes:
                open_nodes[-1][1] += size
            continue
        elif isinstance(event, ScalarEvent):
            size = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, AliasEvent):
            size = sizes.get(event.anchor, 1)
        else:
            continue
        if open_nodes:
            open_nodes[-1][1] += size
        total += size
        if total > MAX_VALUES:
            raise InputError(
                f"{source}:{event.start_mark.line + 1}: the document expands to more than {MAX_VALUES} values "
                "(aliases of anchors count every value they repeat); write it out without nested aliases"
            )


def parse_yaml(text: str, source: str) -> Any:
    """A YAML document as ruamel's commented data (which knows each value's line), after the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", YAMLWarning)  # e.g. an anchor defined twice: an error, not stderr noise
            _check_shape(text, source)
            return _yaml().load(io.StringIO(text))
    except YAMLWarning as exc:
        said = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or ["a YAML warning"]
        lines = re.findall(r"line (\d+)", str(exc))
        where = f"{source}:{lines[-1]}" if lines else source
        raise InputError(f"{where}: invalid YAML: {said[0]}") from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = (exc.problem or exc.context or "invalid YAML").splitlines()[0]
        raise InputError(f"{where}: invalid YAML: {problem}") from None
    except ReaderError as exc:  # a control character: the reader counts characters, not lines
        line = text.count("\n", 0, max(0, exc.position)) + 1
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise InputError(
            f"{source}:{line}: invalid YAML: control character U+{char:04X} is not allowed; remove it"
        ) from None
    except RecursionError:
        raise InputError(f"{source}: nested more than {MAX_DEPTH} levels deep") from None
    except InputError:
        raise
    except Exception as exc:  # ruamel raises a few unmarked errors (bad tokens, unhashable keys)
        raise InputError(f"{source}: invalid YAML: {exc}".splitlines()[0]) from None


def read_yaml(path: Path) -> Any:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputError(f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; topology and scenario files are a few KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None
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


Override = tuple[tuple[Any, ...], str]  # where a --set item put its value, and the item as written


def explain(exc: ValidationError, data: Any, source: str, overrides: list[Override] | None = None) -> str:
    """One line for the first validation error: file:line (or the --set item that caused it), field, what is wrong."""
    err = exc.errors(include_url=False)[0]
    loc = _strip_model_loc(tuple(err["loc"]))
    msg = " ".join(str(err["msg"]).split())  # one line, whatever a message holds
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Cross-field checks name the field they are about: "@elb.listeners[0].service: ..."
    if msg.startswith("@") and ": " in msg:
        path, msg = msg[1:].split(": ", 1)
        loc = loc + parse_dotted(path)
    field = dotted(loc)
    if err["type"] == "extra_forbidden":
        parent = loc[:-1]
        problem = f"unknown field '{dotted(parent) + '.' if parent else ''}{loc[-1]}'; check the spelling"
    elif err["type"] == "missing":
        problem = f"{field}: required field is missing"
    else:
        shown = "" if err["type"].startswith(("value_error", "assertion")) else _got(err.get("input"))
        problem = f"{field}: {msg}{shown}" if loc else msg
    item = _override_at(loc, overrides or [])
    if item is not None:
        path, text = item
        if path == loc and err["type"] not in ("extra_forbidden", "missing"):
            problem = problem[len(field) + 2 :]
        return f"--set {text}: {problem}"
    line = line_of(data, loc)
    return f"{source}:{line}: {problem}" if line else f"{source}: {problem}"


def _override_at(loc: tuple[Any, ...], overrides: list[Override]) -> Override | None:
    """The last --set item that set the field in error, something inside it, or a value that contains it."""
    if not loc:
        return None
    for path, text in reversed(overrides):
        n = min(len(path), len(loc))
        if path[:n] == loc[:n]:
            return path, text
    return None


def _got(value: Any) -> str:
    if isinstance(value, dict | list) or value is None:
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def to_plain(data: Any) -> Any:
    if isinstance(data, dict):
        return {str(k): to_plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [to_plain(v) for v in data]
    return data


def apply_overrides(data: Any, overrides: list[str], source: str) -> tuple[Any, list[Override]]:
    """Apply `a.b.c=value` overrides (value parsed as YAML); list items are picked by index or by name.

    Returns the data and where each item put its value, so that an error in it names the option."""
    if data is None:
        data = CommentedMap()
    applied: list[Override] = []
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. elb.cross_zone=true")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise InputError(f"--set {item!r}: empty key")
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
        node = data
        path: list[Any] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, part, key)
                path.append(idx)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                path.append(part)
                if last:
                    node[part] = value
                else:
                    if part not in node or node[part] is None:
                        node[part] = CommentedMap()
                    node = node[part]
            else:
                raise InputError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping or list in {source}")
        applied.append((tuple(path), item))
    return data, applied


def _list_index(node: list, part: str, key: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(node) <= idx < len(node):
            return idx % len(node)
        raise InputError(f"--set {key}: index {idx} out of range (the list has {len(node)} items)")
    for idx, elem in enumerate(node):
        if isinstance(elem, dict) and elem.get("name") == part:
            return idx
    raise InputError(f"--set {key}: no list item named '{part}'")


def load_model(model: type[M], path: Path, overrides: list[str] | None = None) -> M:
    data = read_yaml(path)
    return validate_data(model, data, str(path), overrides)


def validate_data(model: type[M], data: Any, source: str, overrides: list[str] | None = None) -> M:
    applied: list[Override] = []
    if overrides:
        data, applied = apply_overrides(data, overrides, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(to_plain(data))
    except ValidationError as exc:
        raise InputError(explain(exc, data, source, applied)) from None
