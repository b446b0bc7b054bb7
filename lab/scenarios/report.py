"""Reports of scenario and matrix runs: results.json, report.md, report.html (plots inline), junit.xml.

Every view shows the trials judged together (lab.scenarios.aggregate): agreement counts, medians with their
spread, expectations passed in k of N counted runs, and what did not vote or is missing.
"""

from __future__ import annotations

import base64
import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lab.load.stats import slow_calls
from lab.models.scenario import OBSERVATIONS
from lab.scenarios.aggregate import format_spread, status_note

OBSERVATION_TEXT = {
    "O1": "idle error floor, proportional to instances",
    "O2": "few backend connections succeed under load; RequestCount plateaus",
    "O3": "errors stay at a floor after traffic moves away",
    "O4": "client timeouts and rising latency",
    "O5": "the same ELB in front of healthy instances: ~0 errors",
}
MARK = {"YES": "reproduced", "no": "not reproduced", "FLAKY": "FLAKY (the repeats disagree)", "n/a": "n/a"}


def write_all(results: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results.json": out / "results.json",
        "report.md": out / "report.md",
        "report.html": out / "report.html",
        "junit.xml": out / "junit.xml",
    }
    files["results.json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    files["report.md"].write_text(markdown(results))
    files["report.html"].write_text(html_report(results, out))
    files["junit.xml"].write_text(junit(results))
    return files


def cell(obs: dict[str, Any] | None) -> str:
    """One hypothesis x observation cell: `YES 3/3 x3.00 (2.95-3.10)`, `FLAKY 2/3 ...`, `-`."""
    if not obs or obs.get("verdict", "n/a") == "n/a":
        return "-"
    return f"{obs['verdict']} {obs['yes']}/{obs['counted']} {obs.get('figure', '')}".strip()


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in results["scenarios"]:
        row = [s["id"]]
        for o in OBSERVATIONS:
            row.append(cell(s.get("observations", {}).get(o)))
        row.append(status_note(s))
        rows.append(row)
    return rows


def _measured(e: dict[str, Any]) -> str:
    if e.get("measured") is None:
        return "-"
    sp = e.get("spread")
    if sp and sp["min"] != sp["max"]:
        return f"{e['measured']:.4g} ({sp['min']:.4g}-{sp['max']:.4g})"
    return f"{e['measured']:.4g}"


def _passed_in(e: dict[str, Any]) -> str:
    return f"{e.get('passed_runs', int(e['passed']))}/{e.get('counted', 1)}"


def _summary(results: dict[str, Any]) -> str:
    passed = sum(1 for s in results["scenarios"] if s["status"] == "passed")
    repeat = results.get("repeat", 1)
    text = (
        f"{passed}/{len(results['scenarios'])} scenarios behaved as their files expect in every counted run; "
        f"{repeat} repeat{'s' if repeat != 1 else ''} each"
    )
    shard = results.get("shard")
    if results.get("merged"):
        count = shard["count"] if shard else len(results["merged"])
        text += f"; merged from {len(results['merged'])} of {count} shard{'s' if count != 1 else ''}"
    elif shard and shard.get("count", 1) > 1:
        text += f"; shard {shard['index']}/{shard['count']} ({len(shard.get('units', []))} units)"
    return text + f"; {results.get('seconds', 0):.0f} s on {results.get('machine', 'this machine')}."


def missing_lines(results: dict[str, Any]) -> list[str]:
    """What a report lacks: shards not merged, units not run. Empty when complete."""
    out = []
    if results.get("missing_shards"):
        count = results["shard"]["count"]
        out.append("Missing shards: " + ", ".join(f"{i}/{count}" for i in results["missing_shards"]))
    units = [u for s in results["scenarios"] for u in s.get("missing", [])]
    if units:
        out.append(f"Missing units ({len(units)}): " + ", ".join(units))
    return out


def problems(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(MISSING|FAILED|ERROR, what) for everything that keeps the matrix from answering cleanly."""
    out = [("MISSING", line) for line in missing_lines(results)]
    for s in results["scenarios"]:
        for e in s.get("expectations", []):
            if not e["passed"]:
                measured = ", ".join("no data" if m is None else f"{m:.4g}" for m in e.get("measured_all", []))
                out.append(
                    ("FAILED", f"{s['id']}: {e['text']} (passed in {_passed_in(e)} counted runs; measured {measured})")
                )
        if s.get("error"):
            out.append(("ERROR", f"{s['id']}: {s['error']}"))
    return out


def answered(results: dict[str, Any]) -> bool:
    """Every scenario passed in every counted run, and nothing planned is missing (the exit code's 0)."""
    return all(s["status"] == "passed" for s in results["scenarios"]) and not missing_lines(results)


def _scale_note(results: dict[str, Any]) -> str:
    scale = results.get("time_scale", 1.0)
    if scale == 1.0:
        return "ELB and scenario timers at real scale."
    return (
        f"Time scale {scale:g}: the ELB's timers (health check interval and timeout, idle and connect timeouts) "
        f"and the phases ran {1 / scale:g}x faster; per-minute ELB figures are given per ELB minute "
        f"({60 * scale:g} s of wall time). So are conntrack's TCP timeouts and the namespaces' TCP timers; "
        "the kernel's 1 s initial RTO (SYN retransmits) and 60 s socket TIME_WAIT are not (docs/scenarios.md)."
    )


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Seed incident replay: which hypothesis reproduces which observation", ""]
    lines.append(f"{_summary(results)} {_scale_note(results)}")
    lines += [f"\n**{line}**" for line in missing_lines(results)]
    lines += ["", "| hypothesis | " + " | ".join(f"{o}: {OBSERVATION_TEXT[o]}" for o in OBSERVATIONS) + " | verdict |"]
    lines.append("|" + "---|" * (len(OBSERVATIONS) + 2))
    for row in table_rows(results):
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
    lines.append("")
    for s in results["scenarios"]:
        lines += [f"## {s['id']}: {s['title']} ({s['status']})", "", f"**Hypothesis.** {s['hypothesis'].strip()}", ""]
        if s.get("signature"):
            lines += [f"**Expected signature.** {s['signature'].strip()}", ""]
        if s.get("error"):
            lines += [f"**Error:** `{s['error']}`", ""]
        if s.get("expectations"):
            lines += ["| expectation | measured: median (min-max) | passed in | result |", "|---|---|---|---|"]
            for e in s["expectations"]:
                result = "pass" if e["passed"] else "FAIL"
                lines.append(f"| {e['text']} | {_measured(e)} | {_passed_in(e)} | {result} |")
            lines.append("")
        lines += [("  " * depth) + f"- {text}" for depth, text in details(s)]
        lines.append("")
    return "\n".join(lines) + "\n"


def details(s: dict[str, Any]) -> list[tuple[int, str]]:
    """(depth, text) lines under a scenario: each observation's verdict, values and trials; trials not counted."""
    out = []
    for o in OBSERVATIONS:
        obs = s.get("observations", {}).get(o)
        if obs and obs.get("verdict", "n/a") != "n/a":
            out.append((0, f"{o} {MARK[obs['verdict']]} in {obs['yes']}/{obs['counted']}: {obs.get('figure', '')}"))
            out += [(1, f"{k}: {format_spread(k, v)}") for k, v in obs.get("values", {}).items()]
            if len(obs.get("figures", [])) > 1:
                out += [(1, f"repeat {f['repeat']}: {f['figure']}") for f in obs["figures"]]
    for t in s.get("trials", []):
        for run in t.get("runs", []):
            for phase in run.get("phases", []):
                counts = (phase.get("load") or {}).get("latency_bands")
                if counts and slow_calls(counts):
                    where = f"{run.get('variant', '')} {phase['name']}, repeat {t['repeat']}".strip()
                    text = ", ".join(f"{band} {n}" for band, n in counts.items())
                    out.append((0, f"latency histogram ({where}): {text}"))
        if t.get("lab_limited"):
            out.append((0, f"repeat {t['repeat']} lab-limited (not counted): {'; '.join(t['limited_reasons'])}"))
        if t.get("error"):
            out.append((0, f"repeat {t['repeat']} errored (not counted): {t['error']}"))
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def html_report(results: dict[str, Any], out: Path) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lab matrix report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f4f4f4}"
        ".YES{background:#e6f4ea}.no{background:#fce8e6}.FLAKY{background:#fef7e0}img{max-width:100%;margin:1em 0}"
        ".passed{color:#137333}.failed,.error{color:#c5221f}",
        "</style></head><body>",
        "<h1>Seed incident replay: which hypothesis reproduces which observation</h1>",
        f"<p>{esc(_summary(results))} {esc(_scale_note(results))}</p>",
        *(f"<p class='error'><b>{esc(line)}</b></p>" for line in missing_lines(results)),
        "<table><tr><th>hypothesis</th>"
        + "".join(f"<th>{o}<br><small>{esc(OBSERVATION_TEXT[o])}</small></th>" for o in OBSERVATIONS)
        + "<th>verdict</th></tr>",
    ]
    for row in table_rows(results):
        cells = "".join(f"<td class='{esc(c.split(' ')[0])}'>{esc(c)}</td>" for c in row[1:-1])
        status = esc(row[-1].split(" ")[0])
        parts.append(f"<tr><td>{esc(row[0])}</td>{cells}<td class='{status}'>{esc(row[-1])}</td></tr>")
    parts.append("</table>")
    for s in results["scenarios"]:
        parts.append(f"<h2 id='{esc(s['id'])}'>{esc(s['id'])}: {esc(s['title'])} <small class='{s['status']}'>")
        parts.append(f"{esc(s['status'])}</small></h2><p><b>Hypothesis.</b> {esc(s['hypothesis'])}</p>")
        if s.get("signature"):
            parts.append(f"<p><b>Expected signature.</b> {esc(s['signature'])}</p>")
        if s.get("error"):
            parts.append(f"<p class='error'><b>Error:</b> {esc(s['error'])}</p>")
        if s.get("expectations"):
            parts.append(
                "<table><tr><th>expectation</th><th>measured: median (min-max)</th><th>passed in</th>"
                "<th>result</th></tr>"
            )
            for e in s["expectations"]:
                ok = "passed" if e["passed"] else "failed"
                parts.append(
                    f"<tr><td>{esc(e['text'])}</td><td>{esc(_measured(e))}</td><td>{_passed_in(e)}</td>"
                    f"<td class='{ok}'>{ok}</td></tr>"
                )
            parts.append("</table>")
        items = "".join(f"<li style='margin-left:{2 * d}em'>{esc(text)}</li>" for d, text in details(s))
        if items:
            parts.append(f"<ul>{items}</ul>")
        for plot in s.get("plots", []):
            path = out / plot
            if path.exists():
                parts.append(_img(path))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def junit(results: dict[str, Any]) -> str:
    suites = ET.Element("testsuites", name="lab matrix", time=f"{results.get('seconds', 0):.1f}")
    for s in results["scenarios"]:
        cases = s.get("expectations", [])
        failures = sum(1 for e in cases if not e["passed"])
        errors = 1 if s.get("error") or s.get("missing") else 0
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=s["id"],
            tests=str(len(cases) + 1),
            failures=str(failures),
            errors=str(errors),
            time=f"{s.get('seconds', 0):.1f}",
        )
        run = ET.SubElement(suite, "testcase", classname=f"scenario.{s['id']}", name="run")
        ET.SubElement(run, "system-out").text = status_note(s)
        if s.get("error"):
            ET.SubElement(run, "error", message=s["error"]).text = s["error"]
        if s.get("missing"):
            text = f"{len(s['missing'])} planned runs missing: {', '.join(s['missing'])}"
            ET.SubElement(run, "error", message=text).text = text
        for e in cases:
            # The name stays the expectation (CI tracks a test by its name); k/N goes in the outcome.
            case = ET.SubElement(suite, "testcase", classname=f"scenario.{s['id']}", name=e["text"])
            measured = ", ".join("no data" if m is None else f"{m:.6g}" for m in e.get("measured_all", []))
            outcome = f"passed in {_passed_in(e)} counted runs (measured {measured or 'nothing'})"
            if not e["passed"]:
                ET.SubElement(case, "failure", message=outcome).text = e.get("why", "")
            else:
                ET.SubElement(case, "system-out").text = outcome
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
