"""The generated parts of docs/*.md, made from the declarations they describe (models, fault kinds, scenarios).

A block in a markdown file between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->` is replaced by
BLOCKS[NAME](); everything else is prose. `python -m lab.docsgen` rewrites the blocks, `--check` only says
which files are stale (tests/unit/test_input_docs.py runs it), so a changed range, default or scenario claim
shows in the docs or fails the tests.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from lab.faults.kinds import KINDS
from lab.faults.model import param_docs
from lab.models.common import form_of
from lab.models.scenario import (
    Expectation,
    FaultStep,
    Op,
    Phase,
    PhaseKind,
    QuickSettings,
    Scenario,
    Stat,
    TopologyRef,
    Workload,
)
from lab.models.yamlio import read_yaml, validate_data

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)

# How each kind of value is written, in files and in key=value parameters (the parsers in lab.models.common and
# lab.faults.model accept exactly these).
VALUE_FORMS = [
    ("duration", "`250ms`, `10s`, `2m`, `1h`, or a plain number of seconds (`10`, `0.5`)"),
    ("percentage", "`1%`, `0.5%`, or a fraction from 0 to 1 (`0.01`)"),
    ("rate", "bits per second: `512kbit`, `10mbit`, `1gbit`; bytes per second: `2mbps`; or a whole number of bits"),
    ("on/off", "`on`/`off`, `true`/`false`, `yes`/`no`, `1`/`0` (in YAML, plain `true`/`false`)"),
    ("names", "separated by commas (`node-a1,node-b1`), or a YAML list in a scenario"),
    ("whole number", "digits only: `5`, not `5.0`, not `true`"),
    ("one of", "one of the words listed, as written"),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _fields_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| field | value | allowed | default | meaning |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        form = form_of(info.annotation, info.metadata)
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "" if value is None or isinstance(value, BaseModel) else form.show(value)
        key = info.alias or name
        rows.append(
            f"| `{key}` | {_cell(form.kind)} | {_cell(form.allowed)} | {_cell(default)} | "
            f"{_cell(info.description or '')} |"
        )
    return rows


def value_forms() -> str:
    rows = ["| value | written as |", "|---|---|"]
    rows += [f"| {kind} | {_cell(how)} |" for kind, how in VALUE_FORMS]
    return "\n".join(rows) + "\n"


def fault_parameters() -> str:
    """One table per fault kind: its parameters, their forms, ranges and defaults (as `lab fault list`)."""
    out = [
        "How values are written (the same on `lab fault apply` and in a scenario's `params`):",
        "",
        value_forms().rstrip("\n"),
    ]
    for kind in KINDS.values():
        out += ["", f"### `{kind.name}`", "", f"{kind.summary}. Target: {kind.target}. Example: `{kind.example}`", ""]
        out += ["| parameter | value | allowed | default | meaning |", "|---|---|---|---|---|"]
        for p in param_docs(kind.params):
            out.append(
                f"| `{p['name']}` | {_cell(p['form'])} | {_cell(p['allowed'])} | {_cell(p['default'])} | "
                f"{_cell(p['help'])} |"
            )
    return "\n".join(out) + "\n"


def scenario_fields() -> str:
    """Every field of a scenario file, part by part, from the model (as `lab schema scenario`)."""
    parts: list[tuple[str, type[BaseModel], tuple[str, ...]]] = [
        ("The file", Scenario, ()),
        ("`topology`", TopologyRef, ()),
        ("`quick`", QuickSettings, ()),
        ("A phase (`phases[]`)", Phase, ()),
        ("A workload (`phases[].load`)", Workload, ()),
        ("A fault step (`phases[].faults[]`)", FaultStep, ()),
        ("An expectation (`expect[]`; `of` takes `metric`, `phase`, `stat`, `variant`)", Expectation, ()),
    ]
    out: list[str] = []
    for title, model, skip in parts:
        out += [f"#### {title}", "", *_fields_table(model, skip), ""]
    out += [
        f"Phase kinds: {', '.join(f'`{k}`' for k in get_args(PhaseKind))}. "
        f"Operators: {', '.join(f'`{o}`' for o in get_args(Op))}. "
        f"Statistics: {', '.join(f'`{s}`' for s in get_args(Stat))}.",
        "",
        value_forms().rstrip("\n"),
    ]
    return "\n".join(out) + "\n"


def builtin_scenarios() -> str:
    """The built-in scenarios and the seed observations each claims to explain, read from the files."""
    rows = ["| scenario | title | claims to explain |", "|---|---|---|"]
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        scenario = validate_data(Scenario, read_yaml(path), str(path))
        claims = ", ".join(scenario.observations) or "-"
        rows.append(f"| `{path.stem}` | {_cell(scenario.title)} | {claims} |")
    return "\n".join(rows) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "fault-parameters": fault_parameters,
    "scenario-fields": scenario_fields,
    "builtin-scenarios": builtin_scenarios,
}


def regenerate(text: str) -> str:
    """The markdown with every generated block made afresh."""

    def fill(match: re.Match[str]) -> str:
        make = BLOCKS.get(match["name"])
        if make is None:
            raise KeyError(f"unknown generated block '{match['name']}' (blocks: {', '.join(BLOCKS)})")
        return match.group(1) + make() + match.group(4)

    return BLOCK.sub(fill, text)


def stale(docs: Path = DOCS) -> list[Path]:
    return [path for path in sorted(docs.glob("*.md")) if regenerate(path.read_text()) != path.read_text()]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        out_of_date = stale()
        for path in out_of_date:
            print(f"{path}: generated blocks are stale; run `python -m lab.docsgen`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        fresh = regenerate(text)
        if fresh != text:
            path.write_text(fresh)
            print(f"rewrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
