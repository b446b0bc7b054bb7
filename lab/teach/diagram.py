"""Diagrams of a traced path with its AZ boundaries: Mermaid text (pure) and an SVG/PNG drawn with matplotlib."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import InputError

if TYPE_CHECKING:
    from lab.teach.tracedata import Hop, TraceResult

CLIENT_ZONE = "client VPC"
PATH_KINDS = ("client", "elb", "node", "transit", "pod")
STEP = 4.0  # horizontal distance between two hops in the image


@dataclass(frozen=True)
class Box:
    key: str
    label: str  # first line: the host; second: its address on this path
    zone: str  # CLIENT_ZONE or an AZ name
    problem: bool


@dataclass(frozen=True)
class Edge:
    a: int  # index into the boxes
    b: int
    label: str
    reply: bool = False


def _zone(hop: Hop) -> str:
    return hop.az or CLIENT_ZONE


def layout(result: TraceResult) -> tuple[list[Box], list[Edge], list[str]]:
    """The boxes of the path in order, the arrows between them, and the zones to draw (client VPC, then AZs)."""
    hops = [h for h in result.hops if h.kind in PATH_KINDS]
    boxes = [
        Box(key=f"h{i}", label=f"{h.host}\n{h.address}" if h.address else h.host, zone=_zone(h), problem=h.problem)
        for i, h in enumerate(hops)
    ]
    s = result.summary
    edges: list[Edge] = []
    for i in range(1, len(hops)):
        prev, cur = hops[i - 1], hops[i]
        if cur.kind in ("elb", "node") and prev.kind == "client":
            label = f"{s['client']} -> {s['address']}"
        elif cur.kind == "node":
            label = prev.evidence.get("backend_connection") or f"NodePort {cur.address.rsplit(':', 1)[-1]}"
        elif cur.kind == "transit":
            after = cur.evidence.get("conntrack", {}).get("original")
            label = f"after NAT: {after}" if after else "routed to the pod's node"
        elif cur.kind == "pod" and prev.kind == "transit":
            label = "forwarded unchanged"
        elif cur.kind == "pod":
            label = f"DNAT to {s['dnat_to']}" if s.get("dnat_to") else "to the pod"
            if s.get("snat") is not None:
                label += f", SNAT to {s['snat_to']}" if s["snat"] else ", no SNAT"
        else:
            label = ""
        edges.append(Edge(i - 1, i, label))
    if result.ok and len(hops) > 1 and hops[-1].kind == "pod":
        # The reply retraces the path; the first arrow back carries the explanation.
        where = s.get("instance") or ""
        for i in range(len(hops) - 1, 0, -1):
            label = f"reply: conntrack on {where} undoes the NAT" if i == len(hops) - 1 else ""
            edges.append(Edge(i, i - 1, label, reply=True))
    zones = [CLIENT_ZONE] + list(s.get("azs") or [])
    for box in boxes:
        if box.zone not in zones:
            zones.append(box.zone)
    return boxes, edges, zones


def _mid(text: str) -> str:
    return '"' + text.replace('"', "'").replace("\n", "<br/>") + '"'


def mermaid(result: TraceResult) -> str:
    """A Mermaid flowchart: one subgraph per AZ (and the client VPC), the path's hosts, the tuples on the arrows."""
    boxes, edges, zones = layout(result)
    lines = ["flowchart LR"]
    for zi, zone in enumerate(zones):
        members = [b for b in boxes if b.zone == zone]
        if not members:
            continue
        title = zone if zone == CLIENT_ZONE else f"AZ {zone}"
        lines.append(f"  subgraph z{zi}[{_mid(title)}]")
        lines += [f"    {b.key}[{_mid(b.label)}]" for b in members]
        lines.append("  end")
    for e in edges:
        arrow = "-.->" if e.reply else "-->"
        text = f"|{_mid(e.label)}|" if e.label else ""
        lines.append(f"  {boxes[e.a].key} {arrow}{text} {boxes[e.b].key}")
    bad = [b.key for b in boxes if b.problem]
    if bad:
        lines.append("  classDef problem stroke:#c00,stroke-width:3px")
        lines.append(f"  class {','.join(bad)} problem")
    return "\n".join(lines) + "\n"


def render_image(result: TraceResult, path: Path) -> Path:
    """Draw the path as SVG or PNG (by the file's suffix): AZs as horizontal bands, hops left to right."""
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise InputError(f"--diagram {path}: the file name must end in .svg or .png")
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

    boxes, edges, zones = layout(result)
    lane = {z: i for i, z in enumerate(zones)}
    width, height = STEP * max(2, len(boxes)) + 1.6, 1.5 * len(zones) + 1.0
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(-1.6, STEP * max(2, len(boxes)))
    ax.set_ylim(-len(zones) * 1.5 - 0.3, 0.9)
    ax.axis("off")

    def y_of(zone: str) -> float:
        return -lane[zone] * 1.5

    for z, i in lane.items():
        shade = "#eef3fb" if z == CLIENT_ZONE else ("#f4f4f4" if i % 2 else "#fbfbfb")
        ax.add_patch(Rectangle((-1.6, y_of(z) - 0.75), STEP * max(2, len(boxes)) + 1.6, 1.5, color=shade, zorder=0))
        ax.text(-1.5, y_of(z) + 0.55, z if z == CLIENT_ZONE else f"AZ {z}", fontsize=9, color="#555", va="center")
        ax.axhline(y_of(z) - 0.75, color="#999", linestyle="--", linewidth=0.8, zorder=1)
    centres, patches = [], []
    for i, b in enumerate(boxes):
        x, y = i * STEP + 0.2, y_of(b.zone)
        centres.append((x, y))
        patch = FancyBboxPatch(
            (x - 1.1, y - 0.35),
            2.2,
            0.7,
            boxstyle="round,pad=0.05",
            facecolor="#ffecec" if b.problem else "white",
            edgecolor="#c00" if b.problem else "#333",
            linewidth=2 if b.problem else 1,
            zorder=3,
        )
        ax.add_patch(patch)
        patches.append(patch)
        ax.text(x, y, b.label, ha="center", va="center", fontsize=8, zorder=4)
    label_box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}
    for e in edges:
        (x1, y1), (x2, y2) = centres[e.a], centres[e.b]
        style = {"linestyle": "--", "color": "#2a7"} if e.reply else {"color": "#333"}
        ax.add_patch(
            FancyArrowPatch(
                (x1, y1), (x2, y2), patchA=patches[e.a], patchB=patches[e.b], arrowstyle="-|>", mutation_scale=12,
                connectionstyle=f"arc3,rad={-0.3 if e.reply else 0.0}", zorder=2, **style,
            )
        )  # fmt: skip
        if e.label and not e.reply:
            y = (y1 + y2) / 2 + (0.52 if y1 == y2 else 0)  # same lane: above the arrow, clear of the reply
            ax.text((x1 + x2) / 2, y, _wrap(e.label), ha="center", va="center", fontsize=7, zorder=5, bbox=label_box)
    replies = [e.label for e in edges if e.reply and e.label]
    if replies:
        ax.text(-1.5, -len(zones) * 1.5 - 0.1, f"dashed: the reply, back the same way ({replies[0][7:]})",
                fontsize=8, color="#2a7")  # fmt: skip
    title = f"lab trace {result.service} via {result.via}" + ("" if result.ok else f": FAILED ({result.error})")
    ax.set_title(title, fontsize=10, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=suffix[1:], bbox_inches="tight")
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 34) -> str:
    """Break a long arrow label at its arrow (or first comma) so it fits between two boxes."""
    if len(text) <= width:
        return text
    if " -> " in text:
        return text.replace(" -> ", "\n-> ", 1)
    return text.replace(", ", ",\n", 1)


def trace_json(result: TraceResult) -> dict[str, Any]:
    """The trace for machines (`lab trace --json`): every hop, and the path as a Mermaid flowchart."""
    return {**result.to_json(), "mermaid": mermaid(result)}
