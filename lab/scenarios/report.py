"""Reports of scenario and matrix runs: results.json, report.md, report.html (plots inline), junit.xml."""

from __future__ import annotations

import base64
import html
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from lab.models.scenario import OBSERVATIONS

OBSERVATION_TEXT = {
    "O1": "idle error floor, proportional to instances",
    "O2": "few backend connections succeed under load; RequestCount plateaus",
    "O3": "errors stay at a floor after traffic moves away",
    "O4": "client timeouts and rising latency",
    "O5": "the same ELB in front of healthy instances: ~0 errors",
}
MARK = {True: "reproduced", False: "not reproduced", None: "n/a"}


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


def cell(obs: dict[str, Any] | None) -> tuple[str, str]:
    """(verdict word, figure) for one hypothesis x observation cell."""
    if not obs:
        return "n/a", ""
    return MARK[obs.get("reproduced")], obs.get("figure", "")


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for s in results["scenarios"]:
        row = [s["id"]]
        for o in OBSERVATIONS:
            verdict, figure = cell(s.get("observations", {}).get(o))
            symbol = {"reproduced": "YES", "not reproduced": "no", "n/a": "-"}[verdict]
            row.append(f"{symbol} {figure}".strip())
        row.append(s["status"])
        rows.append(row)
    return rows


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
    passed = sum(1 for s in results["scenarios"] if s["status"] == "passed")
    lines.append(
        f"{passed}/{len(results['scenarios'])} scenarios behaved as their files expect; "
        f"{results.get('seconds', 0):.0f} s on {results.get('machine', 'this machine')}. {_scale_note(results)}"
    )
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
            lines += ["| expectation | measured | result |", "|---|---|---|"]
            for e in s["expectations"]:
                measured = "-" if e.get("measured") is None else f"{e['measured']:.4g}"
                lines.append(f"| {e['text']} | {measured} | {'pass' if e['passed'] else 'FAIL'} |")
            lines.append("")
        for o in OBSERVATIONS:
            obs = s.get("observations", {}).get(o)
            if obs and obs.get("reproduced") is not None:
                lines.append(f"- {o} {MARK[obs['reproduced']]}: {obs.get('figure', '')}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def html_report(results: dict[str, Any], out: Path) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>lab matrix report</title><style>",
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f4f4f4}"
        ".YES{background:#e6f4ea}.no{background:#fce8e6}img{max-width:100%;margin:1em 0}"
        ".passed{color:#137333}.failed,.error{color:#c5221f}",
        "</style></head><body>",
        "<h1>Seed incident replay: which hypothesis reproduces which observation</h1>",
        f"<p>{esc(_scale_note(results))} Run took {results.get('seconds', 0):.0f} s.</p>",
        "<table><tr><th>hypothesis</th>"
        + "".join(f"<th>{o}<br><small>{esc(OBSERVATION_TEXT[o])}</small></th>" for o in OBSERVATIONS)
        + "<th>verdict</th></tr>",
    ]
    for row in table_rows(results):
        cells = "".join(f"<td class='{esc(c.split(' ')[0])}'>{esc(c)}</td>" for c in row[1:-1])
        parts.append(f"<tr><td>{esc(row[0])}</td>{cells}<td class='{esc(row[-1])}'>{esc(row[-1])}</td></tr>")
    parts.append("</table>")
    for s in results["scenarios"]:
        parts.append(f"<h2 id='{esc(s['id'])}'>{esc(s['id'])}: {esc(s['title'])} <small class='{s['status']}'>")
        parts.append(f"{esc(s['status'])}</small></h2><p><b>Hypothesis.</b> {esc(s['hypothesis'])}</p>")
        if s.get("signature"):
            parts.append(f"<p><b>Expected signature.</b> {esc(s['signature'])}</p>")
        if s.get("error"):
            parts.append(f"<p class='error'><b>Error:</b> {esc(s['error'])}</p>")
        if s.get("expectations"):
            parts.append("<table><tr><th>expectation</th><th>measured</th><th>result</th></tr>")
            for e in s["expectations"]:
                measured = "-" if e.get("measured") is None else f"{e['measured']:.4g}"
                ok = "passed" if e["passed"] else "failed"
                parts.append(f"<tr><td>{esc(e['text'])}</td><td>{measured}</td><td class='{ok}'>{ok}</td></tr>")
            parts.append("</table>")
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
        errors = 1 if s.get("error") else 0
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
        if s.get("error"):
            ET.SubElement(run, "error", message=s["error"]).text = s["error"]
        for e in cases:
            case = ET.SubElement(suite, "testcase", classname=f"scenario.{s['id']}", name=e["text"])
            if not e["passed"]:
                measured = "no data" if e.get("measured") is None else f"{e['measured']:.6g}"
                ET.SubElement(case, "failure", message=f"measured {measured}").text = e.get("why", "")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
