"""`lab scenario list|validate|run|metrics` and `lab matrix`: replay hypotheses and answer the seed's question.

The library is imported inside each command (at use, for start-up speed): `lab --help` stays light.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lab.cli.app import app, command, console, print_json, progress
from lab.cli.options import BackendOpt, JsonOpt, ReportOpt, set_option
from lab.cli.views import finish_matrix
from lab.errors import InputError

scenario_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Replay one hypothesis as a scenario; list and validate them."
)
app.add_typer(scenario_app, name="scenario")

# CI's budget: `make test` is ~9 min of pytest plus the quick matrix (~5.5 min per repeat here); 3 repeats
# keep it near 26 min of the 90, and give every cell an agreement count (YES 3/3, FLAKY 2/3).
MATRIX_REPEAT = 3


def repeat_option(default: int) -> typer.Option:
    return typer.Option(
        default,
        "--repeat",
        metavar="N",
        help="Run each scenario N times; verdicts become agreement counts (YES 3/3, FLAKY 2/3), figures medians "
        "with their spread.",
    )


@command("list", on=scenario_app, epilog="Example:\n\n  lab scenario list")
def list_cmd(json_out: bool = JsonOpt) -> None:
    """The built-in scenarios (scenarios/*.yaml): their titles and the observations they claim to explain."""
    from rich.table import Table  # imported at use for start-up speed

    from lab.models.yamlio import read_yaml
    from lab.scenarios.loader import builtin

    rows = []
    for path in builtin():
        data = read_yaml(path) or {}
        rows.append(
            {
                "id": path.stem,
                "file": str(path),
                "title": data.get("title", ""),
                "observations": data.get("observations", []),
            }
        )
    if json_out:
        print_json(rows)
        return
    table = Table(title="built-in scenarios", title_justify="left")
    for col in ("id", "title", "claims"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["title"], " ".join(r["observations"]) or "-")
    console().print(table)


@command(
    "validate",
    on=scenario_app,
    epilog="Examples:\n\n  lab scenario validate scenarios/baseline.yaml\n\n"
    "  lab scenario validate conntrack-exhaustion",
)
def validate_cmd(
    files: list[str] = typer.Argument(..., help="Scenario files or built-in names."),
    json_out: bool = JsonOpt,
) -> None:
    """Check scenarios completely (schema, topology overrides, fault kinds and targets, metrics), running nothing."""
    from lab.scenarios.loader import expand_sweep, load_scenario  # imported at use for start-up speed

    out = []
    for name in files:
        loaded = load_scenario(name)
        points = expand_sweep(name)  # every sweep point, checked as a run would check it
        out.append(
            {
                "id": loaded.id,
                "file": str(loaded.path),
                "ok": True,
                "variants": loaded.scenario.variant_names(),
                "seconds": loaded.scenario.duration,
                "sweep_points": len(points) if loaded.scenario.sweep else 0,
            }
        )
    if json_out:
        print_json(out)
    else:
        for o in out:
            sweep = f", {o['sweep_points']} sweep point(s)" if o["sweep_points"] else ""
            console().print(
                f"{o['file']}: ok ({len(o['variants'])} variant(s){sweep}, {o['seconds']:g}s per run at full scale)"
            )


@command("metrics", on=scenario_app, epilog="Example:\n\n  lab scenario metrics")
def metrics_cmd(json_out: bool = JsonOpt) -> None:
    """Every metric an expectation may name, with its kind and statistics."""
    from rich.table import Table  # imported at use for start-up speed

    from lab.scenarios.metrics import CATALOG

    rows = [{"metric": m.name, "kind": m.kind, "stats": list(m.stats), "help": m.help} for m in CATALOG.values()]
    if json_out:
        print_json(rows)
        return
    table = Table(title="metrics for scenario expectations", title_justify="left")
    for col in ("metric", "kind", "stats (first is the default)", "meaning"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["metric"], r["kind"], ", ".join(r["stats"]), r["help"])
    console().print(table)


@command(
    "run",
    on=scenario_app,
    epilog="Examples:\n\n  lab scenario run baseline --quick\n\n"
    "  lab scenario run hc-fanout --time-scale 0.5\n\n"
    "  lab scenario run scenarios/hc-fanout.yaml --report reports/fanout\n\n"
    "  lab scenario run conntrack-exhaustion --quick --repeat 5",
)
def run_cmd(
    file: str = typer.Argument(..., help="Scenario file or built-in name."),
    report_dir: Path = ReportOpt,
    time_scale: float = typer.Option(
        1.0, "--time-scale", help="Shrink the ELB's and the scenario's timers (0 < F <= 1)."
    ),
    quick: bool = typer.Option(False, "--quick", help="The scenario's own quick settings, as `lab matrix --quick`."),
    overrides: list[str] = set_option("Extra topology override KEY=VALUE (repeatable)."),
    repeat: int = repeat_option(1),
    backend: str = BackendOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Replay one scenario (each variant on its own lab), then judge it. Exit 1 when an expectation fails
    in any counted run."""
    if not 0 < time_scale <= 1:
        raise InputError(f"--time-scale {time_scale:g}: must be > 0 and <= 1")
    if quick and time_scale != 1:
        raise InputError("--quick and --time-scale: choose one (--quick uses the scenario's quick time scale)")
    scale = None if quick else time_scale
    results = _run([file], False, [], report_dir, quick or time_scale < 1, scale, overrides, backend, repeat, None)
    finish_matrix(results, json_out)


@command(
    "matrix",
    epilog="Examples:\n\n  lab matrix --all --quick\n\n"
    "  lab matrix scenarios/hc-fanout.yaml --set nodes_per_az=1,2,3 --report reports/fanout\n\n"
    "  lab matrix --all --report reports/full   # real ELB timers: see README for its duration\n\n"
    "  lab matrix --all --quick --repeat 5 --shard 2/4 --report reports/shard-2   # then: lab report merge\n\n"
    "  lab matrix hc-misroute --compare-scales --repeat 1 --report reports/compare   # quick vs full verdicts",
)
def matrix_cmd(
    files: list[str] = typer.Argument(None, help="Scenario files or built-in names (default: --all)."),
    use_all: bool = typer.Option(False, "--all", help="Every built-in scenario."),
    sets: list[str] = set_option("Run every scenario once per value (cross product; repeatable).", metavar="KEY=V1,V2"),
    report_dir: Path = ReportOpt,
    quick: bool = typer.Option(
        False, "--quick", help="Each scenario's own quick settings (scaled timers, short phases): CI-sized."
    ),
    repeat: int = repeat_option(MATRIX_REPEAT),
    shard: str = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Run only the I-th of N stable parts (one per machine; merge them with `lab report merge`).",
    ),
    backend: str = BackendOpt,
    compare_scales: bool = typer.Option(
        False, "--compare-scales", help="Run quick, then at full scale; diff the verdicts. Exit 1 if any differ."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Run scenarios one after another and print the hypothesis x observation table. Exit 1 on a failed verdict."""
    from lab.scenarios.matrix import Shard  # imported at use for start-up speed

    if compare_scales:
        if quick or sets or shard:
            raise InputError(
                "--compare-scales runs the quick and the full-scale runs itself: drop --quick, --set, --shard"
            )
        _compare(files or [], use_all or not files, report_dir, backend, repeat, json_out)
        return
    part = Shard.parse(shard) if shard is not None else None
    results = _run(files or [], use_all or not files, sets, report_dir, quick, None, [], backend, repeat, part)
    finish_matrix(results, json_out)


def _compare(files: list[str], use_all: bool, report_dir: Path, backend: str, repeat: int, json_out: bool) -> None:
    from lab.backends import get_backend  # imported at use for start-up speed
    from lab.scenarios import compare

    get_backend(backend)
    with progress("lab matrix --compare-scales") as step:
        rows, paths = compare.run_compare(files, use_all, report_dir, step, backend, repeat)
    if json_out:
        print_json(rows)
    else:
        console().print(compare.markdown(rows), markup=False)
        console().print(f"comparison: {paths['compare.md']} (runs: {report_dir}/quick, {report_dir}/full)")
    if any(not r["same"] for r in rows):
        raise typer.Exit(1)


def _run(files, use_all, sets, report_dir, quick, scale, overrides, backend, repeat, shard):
    from lab.backends import get_backend  # imported at use for start-up speed
    from lab.scenarios.matrix import run_matrix

    get_backend(backend)  # an unknown backend fails before anything runs
    with progress("lab matrix" if len(files) != 1 else f"lab scenario {files[0]}") as step:
        return run_matrix(
            files,
            use_all=use_all,
            sets=sets + list(overrides),
            report_dir=report_dir,
            quick=quick,
            time_scale=scale,
            progress=step,
            backend=backend,
            repeat=repeat,
            shard=shard,
        )
