"""Which quantized inputs stay INT8, chosen per kind of site by measurement on this host (insert-qdq `sites=measured`).

The placement says where Q/DQ *can* go by op type; whether a site pays depends on the runtime's
fusions on this CPU: ONNX Runtime runs a MatMul with quantized inputs as an integer kernel only in
some patterns, and elsewhere falls back to DequantizeLinear -> float op, which is pure cost; and how
much time an integer kernel buys depends on the host (VNNI or not). So the quantized nodes are
grouped by kind (the op, whether it multiplies by a weight or by another activation, and what makes
its input: a LayerNorm, GELU, Softmax, another MatMul ...), and each kind is timed against the model
with every site INT8 (CPU time of one thread, interleaved rounds): what INT8 buys there. Where INT8 is
measurably slower, the output cosine on calibration samples with that kind float says what INT8 costs
there, and a kind both slower and less accurate in INT8 goes back to float; every other kind stays
INT8 (faster, level within the noise margin, or free in accuracy). The choice is then checked as a
whole, and dropped unless the model it gives is no less accurate than the all-INT8 one and slower by
no more than the margin. "Measurably" is judged against the noise measured in the same rounds: the all-INT8 model is timed in
two sessions, and a kind's ratio counts only beyond their difference (and at least 2%): on this shared
2-core host two sessions of one sub-millisecond model differed by 10-20%.
Being measured, it follows the host: a kind that buys time with VNNI may buy none without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import node_key, producer
from onnxcomp.passes.qdq.outlier_ranges import closes_gelu

# Ops that only move or relabel values (and a Mul/Add by a constant: a bias or a smoothing scale) are
# looked through when naming what makes a site's input.
_PLUMBING = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Identity")


@dataclass(frozen=True)
class SiteChoiceLimits:
    """How much the choice may measure (calibration samples for accuracy, wall seconds of timing) and the
    smallest differences it believes."""

    samples: int = 16
    latency_batch: int = 8
    time_budget_s: float = 4.0  # wall seconds of interleaved rounds, for all kinds at once (the check: half)
    min_time_gain: float = 0.02  # the noise margin: INT8 faster or slower by at least 2% of the model's time
    min_accuracy_gain: float = 2e-5  # float "buys accuracy" when the cosine rises by at least this


@dataclass
class KindRow:
    kind: str
    nodes: list[str]
    cosine_int8: float = float("nan")  # the model with every site INT8 (measured only where INT8 is slower)
    cosine_float: float = float("nan")  # the same with this kind float
    time_ratio: float = float("nan")  # CPU time, all INT8 over this kind float (< 1: INT8 buys time)
    decision: str = "int8"
    reason: str = ""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "nodes": len(self.nodes), "cosine_int8": _r(self.cosine_int8),
                "cosine_float": _r(self.cosine_float), "time_ratio": _r(self.time_ratio, 4),
                "decision": self.decision, "reason": self.reason}


@dataclass
class SiteChoice:
    rows: list[KindRow] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    check: dict = field(default_factory=dict)
    seconds: float = 0.0
    noise: float = float("nan")  # |1 - time ratio| of two sessions of the same all-INT8 model

    def as_dict(self, limits: SiteChoiceLimits, feed_shapes: dict) -> dict:
        return {"kinds": [row.as_dict() for row in self.rows], "float_nodes": self.float_nodes,
                "check": self.check, "seconds": round(self.seconds, 1), "samples": limits.samples,
                "timing_noise": _r(self.noise, 4), "margin": _r(max(limits.min_time_gain, self.noise), 4),
                "latency_feed": feed_shapes, "measured_on": "calibration data, CPU time of 1 thread on this host"}


def _ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Time of a over b from interleaved rounds: their fastest rounds, the kernels' cost with the least
    interference (on a loaded shared host the median of per-round ratios moved by 15% between runs)."""
    return float(np.min(a) / np.min(b))


def _r(x: float, digits: int = 6):
    return None if x is None or not np.isfinite(x) else round(float(x), digits)


def _source(t, depth: int = 0) -> str:
    """What makes tensor `t`, looking through plumbing and Mul/Add by a constant."""
    import onnx_graphsurgeon as gs

    node = producer(t)
    if node is None:
        return "graph input" if not isinstance(t, gs.Constant) else "constant"
    if depth < 8 and (node.op in _PLUMBING or (node.op in ("Mul", "Add", "Div")
                                              and any(isinstance(i, gs.Constant) for i in node.inputs))):
        data = next((i for i in node.inputs if not isinstance(i, gs.Constant)), None)
        return _source(data, depth + 1) if data is not None else "constant"
    if node.op == "Mul" and closes_gelu(node):
        return "Gelu"
    return node.op


def site_kind(node) -> str:
    """The kind of a quantized node's input site, e.g. 'MatMul x·W after LayerNormalization'."""
    import onnx_graphsurgeon as gs

    acts = [t for t in node.inputs[:2] if not isinstance(t, gs.Constant)
            and not (producer(t) is not None and producer(t).op in ("Constant", "DequantizeLinear"))]
    form = "x·W" if len(acts) < 2 else "x·y"
    return f"{node.op} {form} after {_source(acts[0]) if acts else 'constant'}"


def site_kinds(graph, nodes: list[str]) -> dict[str, list[str]]:
    """Kind -> the quantized nodes (in graph order) whose input sites are of that kind."""
    wanted = set(nodes)
    kinds: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node_key(node) in wanted:
            kinds.setdefault(site_kind(node), []).append(node_key(node))
    return kinds


def choose_sites(build: Callable[[frozenset], object], kinds: dict[str, list[str]], accuracy: Callable,
                 feeds: dict, limits: SiteChoiceLimits, say=lambda m: None) -> SiteChoice:
    """Measure each kind (see the module docstring). build(float_nodes) -> ModelProto;
    accuracy(model) -> Fidelity on calibration samples; feeds: one batch to time on."""
    from onnxcomp.measure.latency import interleaved_rounds

    start = time.perf_counter()
    choice = SiteChoice()
    if not kinds:
        return choice
    base = build(frozenset())
    variants = {kind: build(frozenset(nodes)) for kind, nodes in kinds.items()}
    say(f"insert-qdq: timing {len(kinds)} kinds of quantized sites, then the accuracy of those slower in INT8")
    models = [base, base, *variants.values()]  # the all-INT8 model twice: two sessions of one model show the noise
    times = interleaved_rounds(models, [feeds] * len(models), threads=1, budget_s=limits.time_budget_s)
    choice.noise = abs(_ratio(times[1], times[0]) - 1.0)
    margin = max(limits.min_time_gain, choice.noise)
    base_cos = None
    for (kind, model), t in zip(variants.items(), times[2:]):
        row = KindRow(kind, kinds[kind], time_ratio=_ratio(times[0], t))
        if slower_in_int8(row, margin):  # accuracy decides only here, so it is measured only here
            base_cos = accuracy(base).cosine if base_cos is None else base_cos
            row.cosine_int8, row.cosine_float = base_cos, accuracy(model).cosine
        choice.rows.append(decide(row, limits, margin))
    chosen = [n for row in choice.rows if row.decision == "float" for n in row.nodes]
    if chosen:
        choice.float_nodes, choice.check = _checked(build, chosen, base, base_cos, accuracy, feeds, limits, margin)
        if not choice.check["kept"]:
            for row in choice.rows:
                if row.decision == "float":
                    row.decision = "int8"
                    row.reason += "; back to INT8: the float kinds together were slower or less accurate (check)"
    choice.seconds = time.perf_counter() - start
    return choice


def slower_in_int8(row: KindRow, margin: float) -> bool:
    """INT8 measurably slower than float here: the runtime found no integer kernel for these sites."""
    return row.time_ratio >= 1.0 + margin


def decide(row: KindRow, limits: SiteChoiceLimits, margin: float | None = None) -> KindRow:
    """Float where INT8 is measurably slower and costs accuracy; INT8 everywhere else. Time level within
    the noise margin stays INT8: measured at one shape, a gain that small can grow at another (longer
    sequences), and a float weight is four times the bytes."""
    margin = limits.min_time_gain if margin is None else margin
    if row.time_ratio <= 1.0 - margin:
        row.decision, row.reason = "int8", f"INT8 is {100 * (1 - row.time_ratio):.1f}% faster"
    elif not slower_in_int8(row, margin):
        row.decision, row.reason = "int8", f"level in time ({row.time_ratio:.3f}x, within the noise margin)"
    elif row.cosine_float - row.cosine_int8 < limits.min_accuracy_gain:
        row.decision, row.reason = "int8", f"INT8 is slower ({row.time_ratio:.3f}x) but costs no accuracy here"
    else:
        row.decision = "float"
        row.reason = (f"INT8 is slower ({row.time_ratio:.3f}x: no integer kernel here) and costs "
                      f"{row.cosine_float - row.cosine_int8:.2e} cosine")
    return row


def _checked(build, chosen: list[str], base, base_cos: float, accuracy, feeds: dict,
             limits: SiteChoiceLimits, margin: float) -> tuple[list[str], dict]:
    """The kinds chosen float, measured together against all INT8: kept only when no less accurate, no slower."""
    from onnxcomp.measure.latency import interleaved_rounds

    model = build(frozenset(chosen))
    cos = accuracy(model).cosine
    times = interleaved_rounds([base, model], [feeds, feeds], threads=1, budget_s=limits.time_budget_s / 2)
    ratio = _ratio(times[1], times[0])
    kept = cos >= base_cos and ratio <= 1.0 + margin
    check = {"cosine": _r(cos), "cosine_all_int8": _r(base_cos), "time_ratio_to_all_int8": _r(ratio, 4),
             "kept": kept}
    return (sorted(chosen) if kept else []), check
