"""JSON Schemas of the declarative files (published by `lab schema`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lab.models.incident import Incident
from lab.models.scenario import Scenario
from lab.models.topology import Topology


def topology_schema() -> dict[str, Any]:
    schema = Topology.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lab topology"
    return schema


def scenario_schema() -> dict[str, Any]:
    schema = Scenario.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lab scenario"
    return schema


def incident_schema() -> dict[str, Any]:
    schema = Incident.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "lab incident"
    return schema


SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "topology": topology_schema,
    "scenario": scenario_schema,
    "incident": incident_schema,
}
