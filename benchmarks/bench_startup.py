"""Benchmark: the CLI's start-up - CPU seconds of `lab --help` and of `lab up --dry-run` (no root needed).

Run:  .venv/bin/python benchmarks/bench_startup.py [--runs 5] [--repo DIR]
`--repo DIR` measures another checkout (e.g. a worktree of an older commit) with this venv's packages.
Python's bytecode of lab/ and services/ is compiled first, as any run without PYTHONDONTWRITEBYTECODE leaves
it: the figures are for a warm install, not for the first run after an edit. Not a test: figures go in README.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_and_wall(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(user + system CPU seconds of the child, wall seconds) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def median_of(runs: int, cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    cpu_and_wall(cmd, cwd, env)  # warm the page cache
    samples = [cpu_and_wall(cmd, cwd, env) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO, help="The checkout to measure (default: this one).")
    args = parser.parse_args()
    repo = args.repo.resolve()
    for package in ("lab", "services"):
        compileall.compile_dir(repo / package, quiet=1)
    env = {**os.environ, "PYTHONPATH": str(repo)}  # that checkout's lab before the venv's editable one
    lab = [sys.executable, "-m", "lab.cli"]
    cases = [
        ("lab --help", [*lab, "--help"]),
        ("lab up --dry-run (default topology)", [*lab, "up", "--dry-run"]),
        ("python -c pass (the floor)", [sys.executable, "-c", "pass"]),
        ("python -c 'import typer'", [sys.executable, "-c", "import typer"]),
    ]
    print(f"median of {args.runs} runs of {repo}; CPU = user + system seconds of the process")
    print(f"{'command':40} {'CPU':>7} {'wall':>7}")
    for label, cmd in cases:
        cpu, wall = median_of(args.runs, cmd, repo, env)
        print(f"{label:40} {cpu:6.3f}s {wall:6.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
