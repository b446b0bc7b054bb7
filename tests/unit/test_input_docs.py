"""The docs cannot drift: generated blocks match their sources, every YAML example validates, links resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab import docsgen
from lab.cli import app
from lab.faults.kinds import KINDS
from lab.faults.model import param_docs
from lab.incidents.files import load_incident
from lab.lifecycle import load_topology
from lab.scenarios.loader import load_scenario
from tests.conftest import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)


def test_every_generated_block_matches_what_its_source_makes_now():
    assert docsgen.stale() == [], "run `python -m lab.docsgen` and commit the docs"


def test_the_generated_blocks_are_in_the_docs_that_promise_them():
    text = {p.name: p.read_text() for p in DOCS}
    assert "<!-- generated: fault-parameters -->" in text["faults.md"]
    assert "<!-- generated: fault-parameters -->" in text["writing-scenarios.md"]
    assert "<!-- generated: scenario-fields -->" in text["writing-scenarios.md"]
    assert "<!-- generated: builtin-scenarios -->" in text["scenarios.md"]


def test_a_changed_declaration_makes_the_docs_stale(monkeypatch):
    """The check can fail: a different range in a declaration no longer matches the committed docs."""
    real = docsgen.fault_parameters
    monkeypatch.setitem(docsgen.BLOCKS, "fault-parameters", lambda: real().replace("from 0s to 10s", "from 0s to 9s"))
    assert {p.name for p in docsgen.stale()} == {"faults.md", "writing-scenarios.md"}


def test_the_builtin_scenario_table_shows_each_files_claims():
    table = docsgen.builtin_scenarios()
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        claims = load_scenario(path).scenario.observations
        assert f"| `{path.stem}` |" in table and table.split(f"| `{path.stem}` |")[1].split("\n")[0].endswith(
            f"| {', '.join(claims) or '-'} |"
        )


def test_lab_fault_list_shows_what_the_docs_show():
    listing = CliRunner().invoke(app, ["fault", "list"]).output
    sections = re.split(r"^(?=\S)", listing, flags=re.M)  # one per kind: its line, then its parameters
    faults_md = (REPO / "docs" / "faults.md").read_text()
    for kind in KINDS.values():
        assert f"`{kind.name}`" in faults_md
        section = next(s for s in sections if s.startswith(f"{kind.name}:"))
        for p in param_docs(kind.params):
            line = next(ln for ln in section.splitlines() if ln.strip().startswith(f"{p['name']}:"))
            assert p["allowed"] in line, line
            assert f"| `{p['name']}` | {p['form']} | {p['allowed']} | {p['default']} |" in faults_md


@pytest.mark.parametrize(
    ("path", "index", "block"),
    [(p, i, b) for p in DOCS for i, b in enumerate(YAML_BLOCK.findall(p.read_text()))],
    ids=lambda v: v.name if isinstance(v, Path) else str(v) if isinstance(v, int) else "",
)
def test_every_yaml_example_in_the_docs_validates_as_written(tmp_path, path, index, block):
    example = tmp_path / f"{path.stem}-{index}.yaml"
    example.write_text(block)
    if "figures:" in block:
        load_incident(example)
    elif "phases:" in block:
        load_scenario(example)
    else:
        load_topology(example)


def test_relative_links_in_the_docs_point_at_files_in_the_repository():
    for doc in [*DOCS, REPO / "README.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is not in the repository"
    assert "shared/seed" not in (REPO / "docs" / "tutorial.md").read_text()
