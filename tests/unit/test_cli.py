"""The CLI, driven with CliRunner: help with examples, dry runs, and one clear line for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lab.cli import app
from lab.cli.options import NAME_HELP, JsonOpt, seconds
from tests.conftest import REPO, TOPOLOGIES, single_error

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


def test_dry_run_of_a_quick_lab_shows_its_scaled_kernel_timers():
    out = invoke("up", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--time-scale", "0.1", "--dry-run").output
    assert "sysctl node-a1: net.netfilter.nf_conntrack_tcp_timeout_syn_sent=12" in out
    assert "sysctl apollo-1: net.ipv4.tcp_fin_timeout=6" in out
    full = invoke("up", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--dry-run").output
    assert "nf_conntrack_tcp_timeout_syn_sent" not in full and "tcp_fin_timeout" not in full


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


def all_commands():
    """Every leaf command of `lab`, as (path, click command): ("fault apply", ...), ("up", ...), ..."""
    import typer.main

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            if hasattr(cmd, "commands"):
                yield from walk(cmd, path)
            else:
                yield path, cmd

    return sorted(walk(typer.main.get_command(app), ""))


def option(cmd, flag):
    return next((p for p in cmd.params if flag in getattr(p, "opts", [])), None)


@pytest.mark.parametrize(("path", "cmd"), all_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_has_a_json_flag_and_an_example(path, cmd):
    flag = option(cmd, "--json")
    assert flag is not None and flag.is_flag, f"lab {path} has no --json flag"
    assert f"lab {path}" in (cmd.epilog or ""), f"lab {path} --help has no example"


def test_json_is_the_shared_option_but_where_it_means_more():
    own = {"exec", "schema", "top"}  # exec captures the command's output; schema is JSON anyway; top: JSON lines
    helps = {path: option(cmd, "--json").help for path, cmd in all_commands()}
    assert own < set(helps)
    assert {path for path, text in helps.items() if text != JsonOpt.help} == own


def test_every_name_option_says_the_fixed_default():
    named = {path: option(cmd, "--name") for path, cmd in all_commands() if option(cmd, "--name")}
    own = {"up", "clean", "demo"}  # up: the topology's name; clean: every lab; demo: its own lab 'demo'
    assert own < set(named) and len(named) > 10
    for path, opt in named.items():
        if path not in own:
            assert opt.help == NAME_HELP and "$LAB_NAME" in opt.help, path
    assert "$LAB_NAME" in named["up"].help and "EVERY lab" in named["clean"].help


@pytest.fixture
def no_lab_here(monkeypatch, tmp_path):
    """An empty state root and netns dir, and no $LAB_NAME: what a bare command sees on a fresh machine."""
    monkeypatch.setattr("lab.state.STATE_ROOT", tmp_path / "state")
    monkeypatch.setattr("lab.backends.netns.NETNS_DIR", tmp_path / "netns")
    monkeypatch.delenv("LAB_NAME", raising=False)
    return tmp_path


def fake_lab_up(root, name):
    """The state file a lab that is up leaves (no namespaces: enough for the name rule)."""
    from lab.state import LabState

    state = LabState(name)
    state.create_dir()
    state.write_info({"name": name, "status": "up", "backend": "netns", "topology": {}})


def test_without_name_commands_act_on_default_not_on_the_one_lab_that_is_up(no_lab_here):
    fake_lab_up(no_lab_here, "other")
    line = single_error(invoke("status"))
    assert line == "Error: lab 'default' is not up (labs up: other)"
    result = invoke("down")
    assert result.exit_code == 0 and result.output == "lab 'default' is not up; nothing to do\n"
    assert single_error(invoke("fault", "status")).startswith("Error: lab 'default' is not up")


def test_lab_name_from_the_environment(no_lab_here, monkeypatch):
    monkeypatch.setenv("LAB_NAME", "mine")
    assert single_error(invoke("call", "accounts", "ping")).startswith("Error: lab 'mine' is not up")
    assert invoke("down", "--json").output == '{\n  "name": "mine",\n  "removed": [],\n  "was_up": false\n}\n'
    assert single_error(invoke("status", "-n", "flag")).startswith("Error: lab 'flag' is not up")  # -n wins
    monkeypatch.setenv("LAB_NAME", "Bad_Name")
    assert single_error(invoke("status")).startswith("Error: $LAB_NAME: lab name 'Bad_Name' is invalid")


def test_errors_under_json_are_one_json_object_on_stdout_with_the_same_message(no_lab_here):
    text = single_error(invoke("status", "-n", "ghost"))
    result = runner.invoke(app, ["status", "-n", "ghost", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": text.removeprefix("Error: ")}
    assert result.stderr == ""
    result = runner.invoke(app, ["schema", "nope", "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["error"].startswith("unknown schema 'nope'")


def test_usage_errors_keep_clicks_exit_code_2():
    result = runner.invoke(app, ["up", "--no-such-option"])
    assert result.exit_code == 2 and "No such option: --no-such-option" in result.output
    assert runner.invoke(app, ["exec", "node-a1"]).exit_code == 2  # no command after `--`


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "accounts", "ping", "--timeout", "soon"], "Error: --timeout: expected a duration"),
        (["trace", "accounts", "--timeout", "5 minutes"], "Error: --timeout: expected a duration"),
        (["load", "accounts", "-r", "10", "-d", "5", "--connect-timeout", "1000x"], "Error: --connect-timeout:"),
        (["load", "accounts", "-r", "10", "-d", "5", "--timeout", "11m"], "Error: --connect-timeout and --timeout"),
        (["metrics", "--interval", "500ms"], "Error: --interval must be between 1 and 3600 seconds, got 0.5"),
        (["diagnose", "--local", "--interval", "2m"], "Error: --interval 2m: must be between 0 and 60 seconds"),
    ],
)
def test_durations_take_units_everywhere(no_lab_here, args, message):
    assert single_error(invoke(*args)).startswith(message)


def test_a_duration_is_seconds_unless_it_says_otherwise():
    assert [seconds(t, "--x") for t in ("500ms", "2s", "1m", "2", "0.25", "1h")] == [0.5, 2, 60, 2, 0.25, 3600]


def test_duration_options_say_their_units_in_help():
    for path, cmd in all_commands():
        for p in cmd.params:
            if p.metavar == "DURATION":
                assert "500ms, 2s, 1m" in p.help and "a bare number is seconds" in p.help, (path, p.name)


def test_load_writes_its_json_with_output_not_json_file():
    cmd = dict(all_commands())["load"]
    assert option(cmd, "--json").is_flag and option(cmd, "--output").metavar == "FILE"
    assert "--json --output result.json" in cmd.epilog


def test_dry_run_as_json_has_every_section(tmp_path):
    result = runner.invoke(app, ["up", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "seed" and data["dry_run"] is True and data["topology"]["name"] == "seed"
    sections = {s["title"]: s["text"] for s in data["plan"]}
    assert "netns lab.seed.node-a1" in sections["namespaces"]
    assert "-A KUBE-NODEPORTS" in sections["kube-proxy rules on node-a1 (iptables-restore --noflush)"]
    assert "backend elb-health" in sections["haproxy.cfg of elb-a1"]
    text = invoke("up", "-t", str(TOPOLOGIES / "seed-2017.yaml"), "--dry-run").output
    assert all(body.strip() in text for body in sections.values())  # the same plan as the text


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"lab (k8s-elb-lab) {version('k8s-elb-lab')}\n"


def test_shell_completion_is_typers_own():
    out = invoke("--help").output
    assert "--install-completion" in out and "--show-completion" in out


def test_exec_usage_shows_the_double_dash():
    assert "Usage: lab exec [OPTIONS] HOST -- COMMAND [ARGS]..." in invoke("exec", "--help").output


def test_the_cli_imports_no_heavy_library_for_help():
    """Structural, not a stopwatch: `lab --help` must not import pydantic, rich, pyroute2 or matplotlib
    (each command imports what it uses when it runs)."""
    code = (
        "import sys\n"
        "sys.argv = ['lab', '--help']\n"
        "from lab.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('pydantic', 'rich', 'pyroute2', 'matplotlib', 'thriftpy2', 'ruamel')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert "Commands" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "[]"
