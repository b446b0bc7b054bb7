"""Mutated built-in topology and scenario files through the real CLI: decided as ok or as one `Error:` line.

Each example takes a built-in file, applies one to three mutations (a value replaced by NaN, an infinity, a huge
or negative number, a boolean, a string or nothing; a key deleted, renamed or duplicated; an alias bomb; random
bytes; a truncation) and runs the commands that read such a file: `lab up --dry-run -t`, `lab explain SERVICE -t`
or `lab scenario validate`. Every run must end in exit 0, or exit 1 with exactly one `Error:` line, never a
traceback, and within HANG_GUARD seconds: a guard against hangs, not a speed benchmark (a decision takes
well under a second here; the bound leaves room for a loaded machine).

`CI=true` derandomizes the examples (the same files on every run); elsewhere each run explores new ones.
"""

from __future__ import annotations

import copy
import io
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from typer.testing import CliRunner

from lab.cli import app
from tests.conftest import REPO

HANG_GUARD = 2.0  # seconds for one decision
ALARM = 20  # a real hang is interrupted here and fails the test instead of blocking the run
EXAMPLES = int(os.environ.get("LAB_FUZZ_EXAMPLES", "200"))

BUILTIN = sorted((REPO / "topologies").glob("*.yaml")) + sorted((REPO / "scenarios").glob("*.yaml"))
NASTY: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    1e300,
    -1e300,
    -5,
    -1,
    0,
    99999999999,
    2**63,
    1.5,
    True,
    False,
    None,
    "",
    "-5s",
    "1e99s",
    "99999999999h",
    "99999999999m",
    ".nan",
    "0ms",
    "x" * 5000,
    "Bad_Name",
    "日本",
    [],
    {},
    [[[[[]]]]],
    {"nested": {"deeper": [1, 2, 3]}},
]
BOMB = "bomb0: &b0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]\n" for i in range(1, 9)
)


@dataclass
class Tally:
    files: int = 0
    runs: int = 0
    errors: int = 0
    slowest: float = 0.0
    slowest_what: str = ""
    failures: list[str] = field(default_factory=list)


def _yaml() -> YAML:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    return yaml


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path and list index in a document, containers and leaves."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*prefix, key))
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.append((*prefix, i))
            out += _paths(value, (*prefix, i))
    return out


def _within(doc: Any, path: tuple, node: Any) -> bool:
    """Whether the place `path` is `node` or inside it (aliases share nodes, so compare identities)."""
    for part in path:
        if doc is node:
            return True
        doc = doc[part]
    return doc is node


def _parent(doc: Any, path: tuple) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


values = st.one_of(
    st.sampled_from(NASTY),
    st.integers(0, 10),  # plausible values too: a file that should pass must pass
    st.sampled_from(["1s", "30s", "2m", "500ms", "1%", "on", "off", "node-a1", "accounts"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Path, bytes, list[str]]:
    """A built-in file, its mutated bytes, and what was done (for the failure message)."""
    source = draw(st.sampled_from(BUILTIN))
    text = source.read_text()
    doc = _yaml().load(text)
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "rename", "alias"]))
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(doc, path)
        if action == "replace":
            parent[path[-1]] = copy.deepcopy(draw(values))  # NASTY's lists and dicts are shared
        elif action == "delete":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[f"{path[-1]}x"] = parent.pop(path[-1])
        elif action == "alias":
            # the same node in two places: the dumper writes an anchor and an alias
            other = draw(st.sampled_from(paths))
            node = parent[path[-1]]
            if not _within(doc, other, node):  # never a node inside itself
                _parent(doc, other)[other[-1]] = node
                path = (*path, "->", *other)
        done.append(f"{action} {'.'.join(map(str, path))}")
    out = io.StringIO()
    _yaml().dump(doc, out)
    data = out.getvalue().encode()
    edit = draw(st.sampled_from(["none"] * 5 + ["duplicate", "bomb", "bytes", "truncate", "garbage"]))
    lines = data.splitlines(keepends=True)
    if edit == "duplicate" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        lines.insert(i, lines[i])
        data = b"".join(lines)
    elif edit == "bomb":
        data += BOMB.encode()
    elif edit == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif edit == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif edit == "garbage":
        data = draw(st.binary(max_size=300))
    done.append(edit)
    return source, data, done


def _commands(source: Path, path: Path) -> list[list[str]]:
    if source.parent.name == "scenarios":
        return [["scenario", "validate", str(path)]]
    return [["up", "--dry-run", "-t", str(path)], ["explain", "accounts", "-t", str(path)]]


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise TimeoutError(f"no decision within {ALARM}s: a hang")


def _decide(runner: CliRunner, args: list[str], tally: Tally, what: str) -> None:
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(ALARM)
    start = time.monotonic()
    try:
        result = runner.invoke(app, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    took = time.monotonic() - start
    tally.runs += 1
    if took > tally.slowest:
        tally.slowest, tally.slowest_what = took, what
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{what}: {type(result.exception).__name__}: {result.exception}\n{output[-2000:]}"
    )
    assert "Traceback" not in output, f"{what}: traceback\n{output[-2000:]}"
    if result.exit_code != 0:
        tally.errors += 1
        lines = output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), (
            f"{what}: exit {result.exit_code}, expected exit 0 or one Error: line with exit 1:\n{output[-2000:]}"
        )
    assert took <= HANG_GUARD, f"{what}: decided in {took:.2f}s, over the {HANG_GUARD:g}s hang guard"


@pytest.mark.filterwarnings("error")  # a warning would be printed to the user's stderr: a second line
def test_mutated_builtin_files_are_decided_with_one_line_never_a_traceback_or_a_hang(capsys):
    tally = Tally()
    runner = CliRunner()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("CI") == "true",
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    @given(mutated())
    def decide(case: tuple[Path, bytes, list[str]]) -> None:
        source, data, done = case
        tally.files += 1
        with TemporaryDirectory() as tmp:
            path = Path(tmp) / source.name
            path.write_bytes(data)
            for args in _commands(source, path):
                _decide(runner, args, tally, f"{' '.join(args[:2])} on {source.name} after {', '.join(done)}")

    decide()
    with capsys.disabled():
        print(
            f"\nfuzz: {tally.files} mutated files, {tally.runs} CLI runs, {tally.errors} one-line errors, "
            f"0 tracebacks, 0 hangs; slowest decision {tally.slowest:.2f}s ({tally.slowest_what})"
        )
