"""Every bad input a user can write is one exact line through the real CLI: file:line (or the --set item),
the field, what is wrong, what is allowed; exit 1. Each case here was once a traceback, a hang or accepted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.models.yamlio import MAX_DEPTH, MAX_FILE_BYTES, MAX_VALUES
from tests.conftest import REPO, TOPOLOGIES, single_error

DEFAULT = (TOPOLOGIES / "default.yaml").read_text()
BASELINE = (REPO / "scenarios" / "baseline.yaml").read_text()
# nine aliases of nine aliases, eight levels deep: 377 bytes that expand to 9**8 = 43 million values
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
).rstrip("\n")


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def changed(tmp_path: Path, text: str, old: str, new: str, name: str = "t.yaml") -> tuple[Path, int]:
    """A copy of `text` with `old` replaced by `new`, and the line `new` is on."""
    assert text.count(old) == 1, old
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if new.strip().splitlines()[0] in ln)
    return path, line


def topology_error(path: Path) -> str:
    """The same one line from every command that reads a topology file."""
    up = single_error(run("up", "--dry-run", "-t", str(path)))
    assert single_error(run("explain", "accounts", "-t", str(path))) == up
    return up


def test_an_alias_bomb_is_refused_before_anything_is_built(tmp_path):
    assert len(BOMB) == 377
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    expected = (
        f"Error: {path}:5: the document expands to more than {MAX_VALUES} values (aliases of anchors count "
        "every value they repeat); write it out without nested aliases"
    )
    assert topology_error(path) == expected
    assert single_error(run("scenario", "validate", str(path))) == expected


def test_an_alias_bomb_in_a_set_value_is_refused_too():
    flow = "{" + BOMB.strip().replace("\n", ", ") + "}"
    assert single_error(run("up", "--dry-run", "--set", f"description={flow}")) == (
        f"Error: --set description:1: the document expands to more than {MAX_VALUES} values (aliases of anchors "
        "count every value they repeat); write it out without nested aliases"
    )


def test_anchors_and_aliases_within_the_limit_still_work(tmp_path):
    text = DEFAULT.replace("    port: 9090\n    node_port: 30090", "    port: &pod 9090\n    node_port: 30090")
    text = text.replace("    port: 9090\n    node_port: 30091", "    port: *pod\n    node_port: 30091")
    assert "*pod" in text
    path = tmp_path / "t.yaml"
    path.write_text(text)
    assert run("up", "--dry-run", "-t", str(path)).exit_code == 0


def test_an_anchor_defined_twice_is_an_error_not_a_warning(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("description: &d one\nname: &d two\n")
    assert topology_error(path) == f"Error: {path}:2: invalid YAML: found duplicate anchor 'd'"


def test_random_bytes_are_one_line_naming_the_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes(b"name: lab\nazs:\n  - name: \xff\xfe\n")
    assert topology_error(path) == f"Error: {path}:3: not UTF-8 text (byte 0xff); save the file as UTF-8"


def test_a_control_character_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("name: lab\ndescription: a\x00b\n")
    assert topology_error(path) == (
        f"Error: {path}:2: invalid YAML: control character U+0000 is not allowed; remove it"
    )


def test_a_file_over_the_size_cap_is_refused_unread(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    assert topology_error(path) == (
        f"Error: {path}: larger than {MAX_FILE_BYTES // 1024} KiB; topology and scenario files are a few KiB"
    )


def test_nesting_deeper_than_the_cap_is_refused(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("description: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert topology_error(path) == (
        f"Error: {path}:1: nested more than {MAX_DEPTH} levels deep; topology and scenario files need a handful"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("    interval: 10s", "    interval: .inf", "elb.health_check.interval: expected a duration such as 10s, "
         "250ms or 2m, got .inf"),
        ("    interval: 10s", "    interval: .nan", "elb.health_check.interval: expected a duration such as 10s, "
         "250ms or 2m, got .nan"),
        ("    interval: 10s", "    interval: 1e300", "elb.health_check.interval: must be from 5s to 5m, got 1e+300"),
        ("    interval: 10s", "    interval: 4", "elb.health_check.interval: must be from 5s to 5m, got 4"),
        ("    interval: 10s", "    interval: '-5s'", "elb.health_check.interval: expected a duration such as 10s, "
         "250ms or 2m, got '-5s'"),
        ("    timeout: 5s", "    timeout: 1e99s", "elb.health_check.timeout: expected a duration such as 10s, "
         "250ms or 2m, got '1e99s'"),
        ("    unhealthy_threshold: 6", "    unhealthy_threshold: 11",
         "elb.health_check.unhealthy_threshold: must be from 2 to 10, got 11"),
        ("\nnodes_per_az: 1", "\nnodes_per_az: true", "nodes_per_az: expected a whole number from 0 to 50, got true"),
        ("\nnodes_per_az: 1", "\nnodes_per_az: 1.0", "nodes_per_az: expected a whole number from 0 to 50, got 1.0"),
        ("\nnodes_per_az: 1", "\nnodes_per_az: '1'", "nodes_per_az: expected a whole number from 0 to 50, got '1'"),
        ("  idle_timeout: 60s", "  idle_timeout: 0", "elb.idle_timeout: must be from 1s to 4000s, got 0"),
        ("  idle_timeout: 60s", "  idle_timeout: 99999999999h",
         "elb.idle_timeout: must be from 1s to 4000s, got '99999999999h'"),
        ("  idle_timeout: 60s", "  connect_timeout: .inf", "elb.connect_timeout: expected a duration such as 10s, "
         "250ms or 2m, got .inf"),
        ("    replicas: 2\n  - name: catalog", "    replicas: -1\n  - name: catalog",
         "services[0].replicas: must be from 0 to 100, got -1"),
        ("name: default", "name: abcdefghijklmnopq", "name: a name is 1-16 lowercase letters, digits or '-', "
         "starting with a letter and not ending with '-'; got 'abcdefghijklmnopq'"),
        ("  - name: accounts\n", "  - name: Accounts_1\n", "services[0].name: a name is 1-24 lowercase letters, "
         "digits or '-', starting with a letter and not ending with '-'; got 'Accounts_1'"),
        ('  kubernetes_version: "1.28.0"', '  kubernetes_version: "1.5.7"', "kube_proxy.flavour: modern renders "
         "kube-proxy 1.28's rules, but cluster.kubernetes_version is 1.5.7 (legacy era, 1.5-1.11); set "
         "kube_proxy.flavour=legacy, or cluster.kubernetes_version=1.28.0 as well"),
        ('  kubernetes_version: "1.28.0"', "  kubernetes_version: 1.28", "cluster.kubernetes_version: a Kubernetes "
         "version is 1.MINOR or 1.MINOR.PATCH, e.g. 1.28.0 (quote it); got 1.28"),
    ],
)  # fmt: skip
def test_bad_topology_values_are_one_line_with_the_range(tmp_path, old, new, message):
    path, line = changed(tmp_path, DEFAULT, old, new)
    if "flavour" in message:  # a check across two fields points at the flavour it contradicts
        line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "flavour:" in ln)
    assert topology_error(path) == f"Error: {path}:{line}: {message}"


def test_a_string_with_a_unit_and_a_plain_number_meet_the_same_range(tmp_path):
    for value in ("0", "0.5", "1", "4000", "4001"):
        as_number, _ = changed(tmp_path, DEFAULT, "  idle_timeout: 60s", f"  idle_timeout: {value}", "n.yaml")
        as_string, _ = changed(tmp_path, DEFAULT, "  idle_timeout: 60s", f"  idle_timeout: '{value}s'", "s.yaml")
        by_number, by_string = (
            run("up", "--dry-run", "-t", str(as_number)),
            run("up", "--dry-run", "-t", str(as_string)),
        )
        assert by_number.exit_code == by_string.exit_code, value
        assert (by_number.exit_code == 0) == (1 <= float(value) <= 4000), value


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("elb.idle_timeout=0", "--set elb.idle_timeout=0: must be from 1s to 4000s, got 0"),
        ("elb.health_check.interval=.inf", "--set elb.health_check.interval=.inf: expected a duration such as 10s, "
         "250ms or 2m, got .inf"),
        ("nodes_per_az=true", "--set nodes_per_az=true: expected a whole number from 0 to 50, got true"),
        ("nodes_per_az=30", "--set nodes_per_az=30: 90 Kubernetes nodes: a lab has at most 60 "
         "(lower nodes_per_az or azs[].nodes)"),
        ("services.accounts.replicas=100", "--set services.accounts.replicas=100: services: 102 pods in all: "
         "a lab has at most 100 (lower services[].replicas)"),
        ("elb.health_check.timeout=10s", "--set elb.health_check.timeout=10s: elb.health_check: health check "
         "timeout must be shorter than the interval (as on AWS)"),
        ("cluster.kubernetes_version=1.5.7", "topologies/default.yaml:14: kube_proxy.flavour: modern renders "
         "kube-proxy 1.28's rules, but cluster.kubernetes_version is 1.5.7 (legacy era, 1.5-1.11); set "
         "kube_proxy.flavour=legacy, or cluster.kubernetes_version=1.28.0 as well"),
    ],
)  # fmt: skip
def test_a_bad_set_names_the_option_not_a_file_line(setting, message):
    assert (
        single_error(run("up", "--dry-run", "-t", "topologies/default.yaml", "--set", setting)) == f"Error: {message}"
    )


def test_legacy_flavour_with_modern_on_request_passes_when_the_version_says_so():
    seed = "topologies/seed-2017.yaml"
    assert single_error(run("up", "--dry-run", "-t", seed, "--set", "kube_proxy.flavour=modern")) == (
        "Error: --set kube_proxy.flavour=modern: modern renders kube-proxy 1.28's rules, but "
        "cluster.kubernetes_version is 1.5.7 (legacy era, 1.5-1.11); set kube_proxy.flavour=legacy, or "
        "cluster.kubernetes_version=1.28.0 as well"
    )
    both = ["--set", "kube_proxy.flavour=modern", "--set", "cluster.kubernetes_version=1.28.0"]
    assert run("up", "--dry-run", "-t", seed, *both).exit_code == 0


def test_the_lab_name_rule_is_the_topologys_name_rule(tmp_path):
    sixteen = "a" * 15 + "1"
    path, _ = changed(tmp_path, DEFAULT, "name: default", f"name: {sixteen}")
    assert run("up", "--dry-run", "-t", str(path)).exit_code == 0
    assert single_error(run("up", "--dry-run", "-n", sixteen + "x")) == (
        f"Error: lab name '{sixteen}x' is invalid: a name is 1-16 lowercase letters, digits or '-', starting with "
        "a letter and not ending with '-'"
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, duration: .nan}",
         "phases[0].duration: expected a duration such as 10s, 250ms or 2m, got .nan"),
        ("{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, duration: .inf}",
         "phases[0].duration: expected a duration such as 10s, 250ms or 2m, got .inf"),
        ("{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, duration: 1e300}",
         "phases[0].duration: must be from 1s to 24h, got 1e+300"),
        ("{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, duration: 99999999999m}",
         "phases[0].duration: must be from 1s to 24h, got '99999999999m'"),
        ("{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, duration: 0}",
         "phases[0].duration: must be from 1s to 24h, got 0"),
        ("rate: 100, connections", "rate: .nan, connections",
         "phases[1].load.rate: expected a number from 0.01 to 100000, got .nan"),
        ("rate: 100, connections", "rate: true, connections",
         "phases[1].load.rate: expected a number from 0.01 to 100000, got true"),
        ("rate: 100, connections", "rate: 100, connect_timeout: .inf, connections",
         "phases[1].load.connect_timeout: expected a duration such as 10s, 250ms or 2m, got .inf"),
        ("  time_scale: 0.1", "  time_scale: 0", "quick.time_scale: must be from 0.001 to 1, got 0"),
        ('op: ">=", value: 0.999', 'op: ">=", value: .nan',
         "expect[3].value: expected a number from 0 to 1e+09, got .nan"),
    ],
)  # fmt: skip
def test_bad_scenario_values_are_one_line_with_the_range(tmp_path, old, new, message):
    path, line = changed(tmp_path, BASELINE, old, new, "s.yaml")
    assert single_error(run("scenario", "validate", str(path))) == f"Error: {path}:{line}: {message}"
    as_json = run("scenario", "validate", "--json", str(path))  # under --json the error is a JSON object
    assert as_json.exit_code == 1 and json.loads(as_json.output) == {"error": f"{path}:{line}: {message}"}


def test_a_scenario_longer_than_a_day_is_refused(tmp_path):
    path, _ = changed(tmp_path, BASELINE, "{name: idle, kind: idle, duration: 2m}", "{name: idle, kind: idle, "
                      "duration: 24h}")  # fmt: skip
    line = next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if ln.startswith("phases:"))
    assert single_error(run("scenario", "validate", str(path))) == (
        f"Error: {path}:{line}: phases: the phases last 86640s in all; a scenario lasts at most a day"
    )


def test_validate_json_is_json(tmp_path):
    result = run("scenario", "validate", "--json", "baseline")
    assert result.exit_code == 0
    json.loads(result.output, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))


FAULT = """\
title: fault params
hypothesis: a hypothesis long enough to pass
topology: {file: default.yaml}
phases:
  - name: steady
    kind: steady
    duration: 10s
    load: {service: accounts, rate: 10}
    faults:
      - {kind: KIND, target: TARGET, params: {PARAMS}}
"""


@pytest.mark.parametrize(
    ("kind", "target", "params", "message"),
    [
        ("link", "node-a1", "delay: .nan", "parameter delay=nan: expected a duration such as 10s, 250ms or 2m"),
        ("link", "node-a1", "delay: 11s", "parameter delay=11s: must be from 0s to 10s"),
        ("link", "node-a1", "loss: .nan", "parameter loss=nan: expected a percentage such as 1% or a fraction "
         "such as 0.01"),
        ("link", "node-a1", "loss: true", "parameter loss=True: expected a percentage such as 1% or a fraction "
         "such as 0.01"),
        ("link", "node-a1", "bandwidth: .inf", "parameter bandwidth=inf: expected a rate such as 10mbit or 512kbit"),
        ("link", "node-a1", "bandwidth: 1e300", "parameter bandwidth=1e+300: expected a rate such as 10mbit or "
         "512kbit"),
        ("link", "node-a1", "partition: 2", "parameter partition=2: expected on/off, true/false or 1/0"),
        ("syn-backlog", "accounts", "backlog: true", "parameter backlog=True: expected a whole number from 1 to "
         "4096"),
        ("syn-backlog", "accounts", "accept_delay: .inf", "parameter accept_delay=inf: expected a duration such "
         "as 10s, 250ms or 2m"),
        ("conntrack-exhaustion", "node-a1", "free: -1", "parameter free=-1: must be from 0 to 16777216"),
        ("conntrack-invalid", "accounts", "rate: 0.9", "parameter rate=0.9: must be from 0.01% to 50%"),
        ("elb-idle-timeout", "elb-a1", "timeout: 2h", "parameter timeout=2h: must be from 100ms to 1h"),
    ],
)  # fmt: skip
def test_bad_fault_parameters_in_a_scenario_are_one_line(tmp_path, kind, target, params, message):
    text = FAULT.replace("KIND", kind).replace("TARGET", target).replace("PARAMS", params)
    path = tmp_path / "s.yaml"
    path.write_text(text)
    line = len(text.splitlines())
    assert single_error(run("scenario", "validate", str(path))) == (
        f"Error: {path}:{line}: phases[0].faults[0]: fault {kind}: {message} (see `lab fault list`)"
    )


def test_fault_parameters_on_the_command_line_are_checked_alike():
    assert single_error(run("fault", "apply", "syn-backlog", "backlog=0", "--dry-run", "-n", "nolab")) == (
        "Error: fault syn-backlog: parameter backlog=0: must be from 1 to 4096 (see `lab fault list`)"
    )
    assert single_error(run("fault", "apply", "link", "delay=nan", "--dry-run", "-n", "nolab")) == (
        "Error: fault link: parameter delay=nan: expected a duration such as 10s, 250ms or 2m (see `lab fault list`)"
    )


def _numbers(schema, where=""):
    """Every number or integer in a JSON Schema, by where it is."""
    if isinstance(schema, dict):
        if schema.get("type") in ("number", "integer"):
            yield where, schema
        for key, value in schema.items():
            yield from _numbers(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            yield from _numbers(value, f"{where}/{i}")


@pytest.mark.parametrize("which", ["topology", "scenario"])
def test_every_number_in_the_json_schema_has_a_minimum_and_a_maximum(which):
    result = run("schema", which)
    assert result.exit_code == 0
    found = list(_numbers(json.loads(result.output)))
    assert len(found) > 10
    unbounded = [where for where, s in found if "minimum" not in s or "maximum" not in s]
    assert unbounded == []


def test_every_fault_parameter_number_has_a_minimum_and_a_maximum():
    from lab.faults.kinds import KINDS

    for kind in KINDS.values():
        found = list(_numbers(kind.params.model_json_schema()))
        unbounded = [where for where, s in found if "minimum" not in s or "maximum" not in s]
        assert unbounded == [], kind.name
