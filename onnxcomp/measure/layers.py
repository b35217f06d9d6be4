"""Layer-by-layer error: both models run with every matching intermediate tensor exposed.

What Polygraphy's "mark all outputs" comparison and ORT's qdq_loss_debug do: a tensor the reference
computes from its inputs (not from constants alone) and the candidate also produces under the same
name is fetched from both, batch by batch, and its SQNR (dB) and mean per-sample cosine are
accumulated. In the reference's graph order, each tensor's `drop_db` is how much SQNR its own node
lost: the lowest SQNR among the node's matched float inputs (graph inputs are exact) minus the
tensor's own. The first tensor whose drop reaches `jump_db` while its SQNR is below `floor_db` is
where the error jumps (float16 rounding alone leaves 60-80 dB everywhere: not a jump). The passes
of onnxcomp keep the names of the tensors they rewrite, so their outputs line up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import copy_with_outputs
from onnxcomp.measure.compare import per_sample_cosine

DEFAULT_JUMP_DB = 10.0
DEFAULT_FLOOR_DB = 40.0


@dataclass
class LayerError:
    tensor: str
    node: str
    op: str
    shape: list
    sqnr_db: float
    cosine: float
    max_abs: float
    drop_db: float
    jump: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Sums:
    signal: float = 0.0
    noise: float = 0.0
    cosines: float = 0.0
    samples: int = 0
    max_abs: float = 0.0
    shape: tuple = ()


def computed_tensors(model) -> list[tuple[str, str, str, list[str]]]:
    """(tensor, producing node, op, its non-constant inputs) for every node output that depends on a
    graph input, in graph order."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {""}
    found = []
    for node in graph.node:
        if all(i in constant for i in node.input) and not node.op_type.startswith("Random"):
            constant.update(node.output)
            continue
        inputs = [i for i in node.input if i not in constant]
        found += [(o, node.name or o, node.op_type, inputs) for o in node.output if o]
    return found


def _exposed(model, names: list[str]):
    """An ORT session of `model` with `names` added as (untyped) outputs, and the names it can give."""
    from onnxcomp.measure.runtime import session

    sess = session(copy_with_outputs(model, names))
    floats = {o.name for o in sess.get_outputs() if o.type in ("tensor(float)", "tensor(float16)", "tensor(double)")}
    return sess, [n for n in names if n in floats]


def layer_errors(reference, candidate, samples, jump_db: float = DEFAULT_JUMP_DB,
                 floor_db: float = DEFAULT_FLOOR_DB, batch: int = 16) -> list[LayerError]:
    """One LayerError per matching float tensor, in the reference's graph order (see the module doc)."""
    from onnxcomp.measure.runtime import run

    produced = computed_tensors(reference)
    theirs = {o for n in candidate.graph.node for o in n.output} | {o.name for o in candidate.graph.output}
    wanted = [t for t, *_ in produced if t in theirs]
    if not wanted:
        raise InputError("--per-layer: the models share no computed tensor names; nothing to compare layer by layer")
    ref_sess, ref_names = _exposed(reference, wanted)
    cand_sess, cand_names = _exposed(candidate, ref_names)
    names = [n for n in ref_names if n in set(cand_names)]
    sums = {n: _Sums() for n in names}
    for feeds in samples.batches(batch):
        expected = run(ref_sess, feeds, names)
        got = run(cand_sess, feeds, names)
        for name in names:
            a, b = np.asarray(expected[name], np.float64), np.asarray(got[name], np.float64)
            s = sums[name]
            if a.shape != b.shape:
                s.shape = None
                continue
            if s.shape is None:
                continue
            s.shape = a.shape
            finite = np.isfinite(a) & np.isfinite(b)
            s.signal += float(np.sum(np.where(finite, a, 0.0) ** 2))
            s.noise += float(np.sum(np.where(finite, a - b, 0.0) ** 2)) + float(np.count_nonzero(~finite & (a != b)))
            s.max_abs = max(s.max_abs, float(np.max(np.abs(np.where(finite, a - b, 0.0)), initial=0.0)))
            cos = per_sample_cosine(a, b)
            s.cosines += float(cos.sum())
            s.samples += len(cos)
    info = {t: (node, op, inputs) for t, node, op, inputs in produced}
    rows, sqnr = [], {}
    for name in names:
        s = sums[name]
        if s.shape is None or not s.samples:
            continue
        own = _db(s.signal, s.noise)
        sqnr[name] = own
        node, op, inputs = info[name]
        upstream = min((sqnr[i] for i in inputs if i in sqnr), default=math.inf)
        drop = 0.0 if upstream == own else upstream - own  # inf - inf is no drop
        rows.append(LayerError(name, node, op, list(s.shape), own, s.cosines / s.samples, s.max_abs, drop,
                               drop >= jump_db and own < floor_db))
    return rows


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    return -math.inf if signal <= 0.0 else 10.0 * math.log10(signal / noise)


def first_jump(rows: list[LayerError]) -> LayerError | None:
    return next((r for r in rows if r.jump), None)


def format_layers(rows: list[LayerError]) -> str:
    from onnxcomp.report import table

    jump = first_jump(rows)
    body = [[i, r.tensor, r.op, "x".join(map(str, r.shape)), f"{r.sqnr_db:.1f}", f"{r.cosine:.6f}",
             f"{r.max_abs:.3g}", f"{r.drop_db:.1f}", "<< first jump" if r is jump else ("jump" if r.jump else "")]
            for i, r in enumerate(rows)]
    return table(["#", "tensor", "op", "shape", "SQNR dB", "cosine", "max abs", "drop dB", ""], body)


def plot_html(rows: list[LayerError], title: str) -> str:
    """A self-contained HTML page (inline SVG, no scripts or network): SQNR along the graph, the jumps marked."""
    from html import escape

    width, height, pad = 960, 360, 48
    finite = [r.sqnr_db for r in rows if math.isfinite(r.sqnr_db)]
    top = (max(finite) if finite else 100.0) + 10.0
    bottom = min(min(finite) if finite else 0.0, 0.0)
    n = max(len(rows) - 1, 1)

    def xy(i: int, db: float) -> tuple[float, float]:
        db = top if not math.isfinite(db) or db > top else max(db, bottom)
        return pad + (width - 2 * pad) * i / n, height - pad - (height - 2 * pad) * (db - bottom) / (top - bottom)

    points = [xy(i, r.sqnr_db) for i, r in enumerate(rows)]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{4 if r.jump else 2.5}" fill="{"#c0392b" if r.jump else "#2c3e50"}">'
        f"<title>{i}: {escape(r.tensor)} ({escape(r.op)}) SQNR {r.sqnr_db:.1f} dB, cosine {r.cosine:.6f}, "
        f"drop {r.drop_db:.1f} dB</title></circle>" for i, (r, (x, y)) in enumerate(zip(rows, points)))
    ticks = "".join(f'<text x="{pad - 6}" y="{xy(0, v)[1] + 4:.1f}" text-anchor="end" font-size="11">{v:.0f}</text>'
                    for v in np.linspace(bottom, top, 6))
    jump = first_jump(rows)
    marker = ""
    if jump is not None:
        x = points[rows.index(jump)][0]
        marker = (f'<line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" stroke="#c0392b" '
                  f'stroke-dasharray="4 3"/><text x="{x + 4:.1f}" y="{pad + 12}" font-size="12" fill="#c0392b">'
                  f"first jump: {escape(jump.tensor)}</text>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title></head>"
            f"<body style=\"font-family:sans-serif\"><h3>{escape(title)}</h3>"
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
            f'<rect width="{width}" height="{height}" fill="white"/>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#999"/>{ticks}'
            f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle" font-size="12">tensor, in graph order '
            f'({len(rows)})</text><text x="14" y="{pad - 16}" font-size="12">SQNR dB (exact drawn at the top)</text>'
            f'<polyline points="{line}" fill="none" stroke="#2980b9" stroke-width="1.5"/>{dots}{marker}</svg>'
            "</body></html>\n")
