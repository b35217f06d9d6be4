"""`compress --report r.html`: the report as one self-contained page (inline CSS and SVG, no network).

The plot is the search: every measured candidate at its latency (or size) ratio against its accuracy
(or cosine), hollow before recovery and filled after it, the chosen one marked, the goal and the
max-drop budget as dashed lines. Below it the final table, the time per stage and every candidate.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

WIDTH, HEIGHT, PAD = 640, 380, 56


def write_page(report: dict, path: str | os.PathLike) -> None:
    """Write the page atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(page(report), encoding="utf-8")
    os.replace(tmp, path)


def page(report: dict) -> str:
    from onnxcomp.compress import figure_rows

    goal = report["goal"]
    e = html.escape
    figures = _table(["", "original", "output", "ratio"], figure_rows(report))
    stages = _table(["stage", "seconds", "runs", "note"],
                    [[s["name"], f"{s['seconds']:.1f}", s["runs"], s["note"]] for s in report["stages"]])
    cands = _table(["ratio", "ranking", "widths", "params", "latency", "size", "drop before", "drop after", "QAT",
                    "chosen"],
                   [[f"{c['ratio']:.3f}", c["ranking"], " ".join(map(str, c["widths"])), c["params"], _x(c["latency"]),
                     _x(c["size"]), _num(c["drop_before"]), _num(c["drop"]), "yes" if c["qat"] else "",
                     "&#9733;" if c["chosen"] else ""] for c in report["candidates"]], raw_last=True)
    host = ", ".join(f"{k} {v}" for k, v in report["host"].items() if k != "channel_probe_ms")
    title = f"onnxcomp compress: {goal['kind']} {goal['value'] if goal['value'] is not None else ''}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 960px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.met {{ color: #16794a; }} .missed {{ color: #b3261e; }}
svg text {{ font: 12px system-ui, sans-serif; fill: #333; }}
</style></head><body>
<h1>{e(title)}</h1>
<p class="{'met' if report['met'] else 'missed'}">{e(report['message'])}</p>
<p>{e(f"target {goal['target']}, quantize {goal['quantize']}, max drop {goal['max_drop']}, latency batch "
       f"{goal['batch']}, {goal['epochs']} epochs; host: {host}; {report['seconds']:.1f} s in all")}</p>
<h2>Search</h2>
{plot(report)}
<h2>Result</h2>
{figures}
<h2>Time per stage</h2>
{stages}
<h2>Candidates</h2>
{cands}
</body></html>
"""


def _x(value) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(headers: list[str], rows: list[list], raw_last: bool = False) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if raw_last and i == len(row) - 1 else e(str(cell))}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def plot(report: dict) -> str:
    """An SVG scatter of the candidates: x the goal's ratio (latency, else size), y accuracy or cosine."""
    goal, metric = report["goal"], report["metric"]
    axis = "latency" if goal["kind"] == "latency" else "size"
    reference = report["figures"].get("quality", {}).get("original") or 1.0
    points = []  # (x, y, kind, label)
    for c in report["candidates"]:
        x = c[axis]
        if x is None:
            continue
        label = f"ratio {c['ratio']:.3g} {c['ranking']}"
        if c["drop_before"] is not None:
            points.append((x, reference - c["drop_before"], "before", label))
        if c["drop"] is not None:
            points.append((x, reference - c["drop"], "chosen" if c["chosen"] else "after", label))
    if not points:
        return "<p>(no candidate was measured)</p>"
    xs = [p[0] for p in points] + ([goal["value"]] if goal["kind"] == axis and goal["value"] else [])
    ys = [p[1] for p in points] + [reference]
    if goal["max_drop"] is not None:
        ys.append(reference - goal["max_drop"])
    x0, x1 = _span(min(xs), max(xs))
    y0, y1 = _span(min(ys), max(ys))
    y1 = min(y1, 1.0 + (y1 - y0) * 0.03)  # accuracy and cosine end at 1
    sx = lambda v: PAD + (v - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
    sy = lambda v: HEIGHT - PAD + (y0 - v) / (y1 - y0) * (HEIGHT - 2 * PAD)
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
              f'aria-label="{axis} against {metric} of every candidate">'),
             f'<rect x="{PAD}" y="{PAD}" width="{WIDTH - 2 * PAD}" height="{HEIGHT - 2 * PAD}" fill="none" stroke="#999"/>']
    for i in range(5):
        vx, vy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(vx):.1f}" y="{HEIGHT - PAD + 16}" text-anchor="middle">{vx:.2f}x</text>')
        parts.append(f'<text x="{PAD - 6}" y="{sy(vy) + 4:.1f}" text-anchor="end">{vy:.3f}</text>')
    parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">{axis} (output / input'
                 f'{", batch " + str(goal["batch"]) if axis == "latency" else ""})</text>')
    parts.append(f'<text x="14" y="{HEIGHT / 2}" transform="rotate(-90 14 {HEIGHT / 2})" text-anchor="middle">'
                 f'{metric}</text>')
    if goal["kind"] == axis and goal["value"]:
        gx = sx(goal["value"])
        parts.append(f'<line x1="{gx:.1f}" y1="{PAD}" x2="{gx:.1f}" y2="{HEIGHT - PAD}" stroke="#16794a" '
                     f'stroke-dasharray="5 4"/><text x="{gx + 4:.1f}" y="{PAD + 14}">goal {goal["value"]}x</text>')
    if goal["max_drop"] is not None:
        by = sy(reference - goal["max_drop"])
        parts.append(f'<line x1="{PAD}" y1="{by:.1f}" x2="{WIDTH - PAD}" y2="{by:.1f}" stroke="#b3261e" '
                     f'stroke-dasharray="5 4"/><text x="{WIDTH - PAD - 4}" y="{by - 5:.1f}" text-anchor="end">'
                     f'max drop {goal["max_drop"]}</text>')
    style = {"before": 'fill="none" stroke="#888"', "after": 'fill="#3867d6"', "chosen": 'fill="#f39c12" stroke="#222"'}
    for x, y, kind, label in sorted(points, key=lambda p: p[2] == "chosen"):
        r = 7 if kind == "chosen" else 4.5
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" {style[kind]}>'
                     f'<title>{html.escape(label)}: {x:.3f}x, {metric} {y:.4f} ({kind} recovery)</title></circle>'
                     .replace("(chosen recovery)", "(chosen, after recovery)"))
    legend = [("before", "before recovery"), ("after", "after recovery"), ("chosen", "chosen")]
    for i, (kind, text) in enumerate(legend):
        lx = PAD + 10 + i * 140
        parts.append(f'<circle cx="{lx}" cy="{PAD - 18}" r="4.5" {style[kind]}/>'
                     f'<text x="{lx + 9}" y="{PAD - 14}">{text}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _span(lo: float, hi: float) -> tuple[float, float]:
    """A padded axis range (never empty)."""
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.01)
    return lo - pad, hi + pad
