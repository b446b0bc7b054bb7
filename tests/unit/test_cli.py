"""The CLI, driven with CliRunner: help with examples, dry runs, and one clear line for bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lab.cli import app
from tests.conftest import TOPOLOGIES, single_error

runner = CliRunner()
COMMANDS = ["up", "down", "status", "clean", "call", "exec", "schema", "demo"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help_with_an_example(cmd):
    result = invoke(cmd, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and f"lab {cmd}" in result.output


def test_schema_prints_the_topology_json_schema():
    result = invoke("schema", "topology")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "lab topology" and "elb" in schema["properties"]


def test_unknown_schema_is_one_line():
    assert (
        single_error(invoke("schema", "nope"))
        == "Error: unknown schema 'nope'; choose one of: topology, scenario, incident"
    )


def test_dry_run_prints_namespaces_rules_and_haproxy_config_without_root():
    result = invoke("up", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--dry-run")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "netns lab.seed.node-a1" in out
    assert "-A KUBE-NODEPORTS" in out and "KUBE-SEP-" in out
    assert "backend elb-health" in out and "track elb-health/node-a1" in out
    assert "process pod/accounts-0" in out


def test_invalid_topology_is_one_line_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((TOPOLOGIES / "default.yaml").read_text().replace("replicas: 2", "replicas: 2\n    replica: 3", 1))
    line = single_error(invoke("up", "-t", str(bad), "--dry-run"))
    assert line.startswith(f"Error: {bad}:") and "unknown field 'services[0].replica'" in line


def test_bad_lab_name_is_one_line():
    line = single_error(invoke("up", "--name", "Bad_Name", "--dry-run"))
    assert "lab name 'Bad_Name' is invalid" in line


def test_bad_time_scale_is_one_line():
    assert "--time-scale 2" in single_error(invoke("up", "--time-scale", "2", "--dry-run"))


def test_unknown_backend_is_one_line():
    assert "unknown backend 'vm'" in single_error(invoke("up", "--backend", "vm", "--dry-run"))


def test_not_root_is_one_line(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    line = single_error(invoke("up", "--name", "nonroot"))
    assert line == "Error: the netns backend needs root (it creates network namespaces): run with sudo"


def test_commands_on_a_lab_that_is_not_up_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr("lab.state.STATE_ROOT", tmp_path)
    for args in (["status", "--name", "ghost"], ["call", "accounts", "ping", "--name", "ghost"]):
        line = single_error(invoke(*args))
        assert line.startswith("Error: lab 'ghost' is not up")


def test_down_of_a_lab_that_is_not_up_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.setattr("lab.state.STATE_ROOT", tmp_path)
    monkeypatch.setattr("lab.backends.netns.NETNS_DIR", tmp_path / "netns")
    result = invoke("down", "--name", "ghost")
    assert result.exit_code == 0 and "not up; nothing to do" in result.output
