"""Integration fixtures: real labs in real namespaces, each test with its own lab name, always removed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from lab import lifecycle
from lab.lab import Lab
from tests.conftest import TOPOLOGIES, lab_namespaces, unique_lab_name


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    """make_lab(topology="default.yaml", overrides=[...], time_scale=1.0) -> a Lab that is up."""
    created: list[str] = []

    def make(
        topology: str = "default.yaml",
        overrides: list[str] | None = None,
        time_scale: float = 1.0,
        name: str | None = None,
    ) -> Lab:
        lab = lifecycle.prepare(TOPOLOGIES / topology, name or unique_lab_name(), overrides or [], "netns", time_scale)
        created.append(lab.name)
        lifecycle.up(lab)
        return Lab.load(lab.name)

    yield make
    for name in created:
        lifecycle.down(name)
        assert lab_namespaces(name) == [], f"lab {name} left namespaces behind"
