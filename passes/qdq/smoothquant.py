"""smooth-quant: move activation outliers into the following weights before INT8 (SmoothQuant); exact in float.

A tensor x read by MatMul/Gemm with constant weights W computes the same x W = (x / s)(s W) for
any positive per-channel s. The 1/s goes into the op that makes x - LayerNormalization's scale and
bias, or the Mul/Add affine a decomposed LayerNorm ends with - and the s into the input rows of
every W that reads x. The float model computes what it did (to rounding); per-tensor INT8 of x no
longer spends its range on a few outlier channels, and the weights, quantized per output channel,
absorb them.

s_k = max|x_k|^alpha / max|W_k,:|^(1-alpha) (Xiao et al., SmoothQuant, 2023). alpha is chosen
per site by measurement, not globally: each candidate, and leaving the site alone, is scored by
the relative error of the quantized layers on calibration rows,
||x W - q(x/s) q(sW)||^2 / ||x W||^2, with the activation format, min/max range and weight range
insert-qdq uses for the target; a site is smoothed only when that error drops by `min_gain`.

Some sites need a new Mul by 1/s before their MatMuls: when x also feeds something else (the
residual Add of a post-LN transformer: the producer must keep its output) and when the producer's
constant is a scalar (GELU's closing x0.5: a vector there stops ONNX Runtime fusing the GELU,
measured slower than the Mul). The Mul is an elementwise pass (on MiniLM the six after GELU cost
about 2% of INT8 latency), so such a site must also gain `extra_op_gain` and have an INT8 output
SQNR below `extra_op_sqnr_db` to begin with (target ort; TensorRT fuses such a Mul into the
neighbouring kernel). Attention's constant score scale is folded into the
query projection first (attention_scale.py, target ort), which wins back about 1%, and its key
and value biases are taken off the per-token path (attention_bias.py, target ort), which wins
back about what the Muls cost (ORT then runs the K and V projections as QLinearMatMul).

`value_sites` (off) also smooths the input of attention's output projection, its 1/s folded into
the value projection's columns (attention_paths.value_path says which channels those are); its
error counts V's INT8 too, which rises as the output projection's falls, and on MiniLM it
measured no gain.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import NameGen, node_key, producer
from onnxcomp.passes.qdq.attention_bias import fold_attention_biases
from onnxcomp.passes.qdq.attention_paths import SHAPE_READERS, probe_shapes, value_path
from onnxcomp.passes.qdq.attention_scale import fold_attention_scales
from onnxcomp.passes.qdq.layer_data import ChannelStats, channel_stats
from onnxcomp.passes.qdq.numerics import (
    REDUCED_WEIGHT_QMAX,
    WEIGHT_QMAX,
    activation_format,
    activation_params,
    fake_quantize,
    host_needs_reduced_range,
    quantize_weight,
    ratio_db,
)
from onnxcomp.pipeline.options import (
    Exclusion,
    Range,
    Target,
    check_ranges,
    exclude_op_option,
    exclude_option,
    target_option,
)
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

DEFAULT_ALPHAS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
_SCALE_LIMITS = (1e-4, 1e4)  # s outside this would push weights or activations toward float32 limits


@dataclass(frozen=True)
class SmoothQuantOptions:
    target: Optional[Target] = target_option()
    alphas: tuple[float, ...] = field(
        default=DEFAULT_ALPHAS, metadata={"help": "migration strengths tried at each site (0: all on the "
                                                  "activations, 1: all on the weights); the best is kept",
                                          "metavar": "ALPHA"})
    min_gain: float = field(default=0.05, metadata={
        "help": "smooth a site only when its measured INT8 error falls by at least this fraction",
        "range": Range(0, 1, hi_open=True)})
    rows: int = field(default=1024, metadata={"help": "calibration rows (token positions) per site the error is "
                                                      "measured on", "range": Range(16)})
    fold: Literal["insert", "duplicate", "none"] = field(default="insert", metadata={
        "help": "where x/s goes when x also feeds non-MatMul readers (a residual): a new Mul before the MatMuls "
                "(measured cheaper), a copy of its producer, or nowhere (such sites are left alone)"})
    extra_op_gain: float = field(default=0.3, metadata={
        "help": "target ort: a site that needs an extra node (see fold; also a producer whose constant is a "
                "scalar that fusions match, GELU's x0.5) is smoothed only when its INT8 error falls by at least "
                "this fraction",
        "range": Range(0, 1, hi_open=True)})
    extra_op_sqnr_db: float = field(default=33.0, metadata={
        "help": "target ort: and such a site only when its INT8 output SQNR is below this many dB (the extra "
                "node costs an elementwise pass: it goes where INT8 loses the most)", "range": Range(0)})
    attention_scale: bool = field(default=True, metadata={
        "help": "target ort: also fold attention's constant score scale (1/sqrt(d) after Q K^T) into the query "
                "projection, which ORT's INT8 MatMul cannot absorb as its float one does (TensorRT fuses it itself, "
                "and its placement would take the mask Add then right after the MatMul for a residual)"})
    attention_bias: bool = field(default=True, metadata={
        "help": "target ort: also drop attention's key bias (softmax ignores it) and move its value bias into the "
                "output projection's bias (softmax rows sum to one): two bias Adds per layer that ORT leaves unfused "
                "after an INT8 MatMul"})
    value_sites: bool = field(default=False, metadata={
        "help": "also smooth the input of attention's output projection, 1/s folded into the value projection "
                "(exact, no extra node; off: on MiniLM it measured no gain, V's INT8 error rising as ctx's falls)"})
    calib_batch_size: int = field(default=16, metadata={"help": "samples per calibration batch", "range": Range(1)})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()

    def __post_init__(self):
        check_ranges(self, "smooth-quant")
        if not self.alphas or any(not (0.0 <= a <= 1.0) for a in self.alphas):
            raise InputError(f"smooth-quant.alphas must be numbers in [0, 1], got {list(self.alphas)}")


@dataclass
class Reader:
    """A MatMul/Gemm that reads the site tensor as its data input; `k_axis` is its weight's input-channel axis."""

    node: object
    weight: object
    k_axis: int

    def kn(self) -> np.ndarray:
        """The weight as [in channels, out channels]."""
        w = np.asarray(self.weight.values, np.float32)
        return w if self.k_axis == 0 else w.T


@dataclass
class Site:
    """A tensor whose producer can absorb 1/s and whose MatMul readers can absorb s."""

    tensor: object
    chain: list  # producer nodes, first to last: [LayerNorm] | [Mul] | [Mul, Add]
    slots: list[tuple[object, int]]  # (node, input index) of the constants divided by s
    readers: list[Reader]
    others: list[str]  # what else reads the unscaled tensor ("Add /x/Add", "the graph output")
    upstream: object = None  # an attention site's V: quantized too (P V's input), and scaled by 1/s as well

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def channels(self) -> int:
        return int(self.readers[0].weight.shape[self.readers[0].k_axis])


@dataclass
class Choice:
    alpha: float | None  # None: left alone
    scale: np.ndarray | None
    error_before: float
    error_after: float
    tried: dict[str, float] = field(default_factory=dict)


@register_pass
class SmoothQuantPass(Pass):
    """Fold per-channel scales between a LayerNorm/affine and its MatMuls so INT8 sees fewer outliers (exact)."""

    name = "smooth-quant"
    exact = True
    Options = SmoothQuantOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        opts = self.options
        if ctx.data is None:
            raise InputError("smooth-quant: calibration data is required (it measures each layer's INT8 error): "
                             "pass --calib FILE.npz or FILE.py:FUNCTION")
        report = PassReport()
        report.details["smooth-quant"] = smooth(graph, ctx, opts, report)
        return report


def smooth(graph, ctx: PassContext, opts: SmoothQuantOptions, report: PassReport) -> dict:
    """Fold the attention scales and smooth every site that gains (see the module doc), in place; counts
    and skips go into `report`. Returns the details (target, attention_scales, sites). Also run by
    insert-qdq{smooth=true}, which `--quantize int8` sets."""
    from onnxcomp.graph.convert import to_model

    exclude = Exclusion(tuple(opts.exclude), tuple(opts.exclude_op))
    exclude.check("smooth-quant", graph)
    target = opts.target or ctx.target or "ort"
    details = {"target": target, "sites": []}
    if opts.attention_scale and target == "ort":  # first: the sites below must see the weights it rescales
        details["attention_scales"] = fold_attention_scales(graph)
        if details["attention_scales"]:
            report.count("folded_attention_scales", len(details["attention_scales"]))
            report.modified = True
    fold_biases = opts.attention_bias and target == "ort"
    # the bias folds remove tensors and leave the others' shapes: one probe serves both
    shapes = probe_shapes(to_model(graph)) if fold_biases or opts.value_sites else None
    if fold_biases:
        details["attention_biases"] = fold_attention_biases(graph, shapes)
        if details["attention_biases"]:
            report.count("folded_attention_biases", len(details["attention_biases"]))
            report.modified = True
    sites, skipped = find_sites(graph, exclude, opts.fold != "none", shapes if opts.value_sites else None)
    for name, reason in skipped:
        report.skip(name, reason)
    if not sites:
        details["note"] = "no LayerNorm/affine -> MatMul site to smooth"
        return details
    ctx.say(f"smooth-quant: measuring {len(sites)} sites on the calibration data")
    tensors = [s.name for s in sites] + [s.upstream.name for s in sites if s.upstream is not None]
    stats = channel_stats(to_model(graph), ctx.data, tensors, opts.rows, opts.calib_batch_size)
    fmt = activation_format(target)
    qmax = REDUCED_WEIGHT_QMAX if target == "ort" and host_needs_reduced_range() else WEIGHT_QMAX
    names = NameGen(graph)
    choices = [(site, fold_mode(site, opts.fold),
                best_scale(site, stats[site.name], opts.alphas, fmt, qmax,
                           stats[site.upstream.name] if site.upstream is not None else None))
               for site in sites]
    for site, mode, choice in choices:
        reason = refusal(choice, mode if target == "ort" else "in-place", opts)
        details["sites"].append(_row(site, choice, mode, reason is None))
        if reason:
            report.skip(site.name, reason)
            continue
        apply_scale(graph, site, choice.scale, names, mode)
        report.modified = True
        report.count("smoothed_sites")
        report.count("smoothed_matmuls", len(site.readers))
        if mode != "in-place":
            report.count(f"{mode}_folds")
    graph.cleanup().toposort()
    return details


def _row(site: Site, choice: Choice, mode: str, smoothed: bool) -> dict:
    return {"tensor": site.name, "producer": node_key(site.chain[-1]), "op": site.chain[-1].op,
            "readers": [node_key(r.node) for r in site.readers], "fold": mode if smoothed else None,
            "alpha": choice.alpha if smoothed else None, "error_before": float(choice.error_before),
            "error_after": float(choice.error_after if smoothed else choice.error_before)}


def refusal(choice: Choice, mode: str, opts: SmoothQuantOptions) -> str | None:
    """Why a site stays as it is, or None to smooth it. A site that needs an extra Mul (mode insert or
    duplicate) must also gain `extra_op_gain` and be worse than `extra_op_sqnr_db` to begin with: the
    Mul costs an elementwise pass, worth it only where INT8 loses the most. (An absolute bar, so a
    second run finds the same sites refused.)"""
    needed = opts.min_gain if mode == "in-place" else max(opts.min_gain, opts.extra_op_gain)
    extra = "" if mode == "in-place" else f" (it needs an extra {'Mul' if mode == 'insert' else 'copy'})"
    if choice.alpha is None or choice.error_after > choice.error_before * (1.0 - needed):
        return (f"smoothing does not lower its INT8 error by {needed:.0%}{extra}: error {choice.error_before:.3g}, "
                f"best {choice.error_after:.3g}")
    sqnr = ratio_db(1.0, choice.error_before)
    if mode != "in-place" and sqnr >= opts.extra_op_sqnr_db:
        return (f"its INT8 output SQNR is already {sqnr:.1f} dB (>= {opts.extra_op_sqnr_db:g}): not worth the extra "
                f"{'Mul' if mode == 'insert' else 'copy'}")
    return None


# ---- finding sites ----------------------------------------------------------------------------

def find_sites(graph, exclude: Exclusion | None = None, other_readers: bool = True,
               shapes: dict | None = None) -> tuple[list[Site], list]:
    """Tensors read by MatMul/Gemm with constant weights whose producer can absorb a per-channel scale.
    With `shapes` (attention_paths.probe_shapes), also attention outputs P V, whose scale the value
    projection absorbs. Returns (sites, [(tensor, reason)] for the ones that cannot be smoothed)."""
    sites, skipped, claimed = [], [], set()
    outputs = {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        readers = _readers(tensor, exclude)
        if not readers:
            continue
        k = int(readers[0].weight.shape[readers[0].k_axis])
        if any(int(r.weight.shape[r.k_axis]) != k for r in readers):
            skipped.append((tensor.name, "its MatMul readers disagree on the channel count"))
            continue
        found = _absorbing_chain(tensor, k)
        if isinstance(found, str) and shapes is not None:
            found = _value_chain(tensor, shapes, outputs) or found
        if isinstance(found, str):
            skipped.append((tensor.name, found))
            continue
        chain, slots, *upstream = found
        if any(id(n) in claimed for n in chain):
            skipped.append((tensor.name, f"{node_key(chain[0])} already absorbs another site's scale"))
            continue
        ids = {id(r.node) for r in readers}
        others = [f"{c.op} {node_key(c)}" for c in tensor.outputs if id(c) not in ids and c.op not in SHAPE_READERS]
        others += [f"{c.op} {node_key(c)}" for n, after in itertools.pairwise(chain) for c in n.outputs[0].outputs
                   if c is not after and c.op not in SHAPE_READERS]
        others += ["the graph output"] if tensor.name in outputs else []
        if others and not other_readers:
            skipped.append((tensor.name, f"also read by {others[0]} (fold=none)"))
            continue
        claimed.update(id(n) for n in chain)
        sites.append(Site(tensor, chain, slots, readers, others, *upstream))
    return sites, skipped


def _readers(tensor, exclude: Exclusion | None) -> list[Reader]:
    import onnx_graphsurgeon as gs

    found = []
    for node in tensor.outputs:
        if node.op not in ("MatMul", "Gemm") or not node.inputs or node.inputs[0] is not tensor:
            continue
        if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
            continue
        w = node.inputs[1]
        if w.values.ndim != 2 or np.dtype(w.values.dtype) != np.float32 or node.inputs[1] is tensor:
            continue
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            continue
        if exclude and exclude.reason([node_key(node), w.name], (node.op,)):
            continue
        k_axis = 1 if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else 0
        found.append(Reader(node, w, k_axis))
    return found


def _channel_constant(node, k: int) -> int | None:
    """Index of the input of an elementwise node that is a float constant scaling the last axis (scalar or [.., k])."""
    import onnx_graphsurgeon as gs

    hits = [i for i, t in enumerate(node.inputs[:2]) if isinstance(t, gs.Constant)]
    if len(node.inputs) != 2 or len(hits) != 1:
        return None
    values = np.asarray(node.inputs[hits[0]].values)
    if values.dtype != np.float32:
        return None
    if values.ndim and (values.shape[-1] not in (1, k) or any(d != 1 for d in values.shape[:-1])):
        return None
    return hits[0]


def _absorbing_chain(tensor, k: int):
    """([producer nodes], [(node, input index) to divide by s]) or the reason there is none."""
    import onnx_graphsurgeon as gs

    node = producer(tensor)
    if node is None:
        return "a graph input: nothing before it can absorb the scale"
    if node.op == "LayerNormalization":
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        axis = int(node.attrs.get("axis", -1))
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return "LayerNormalization over more than the last axis cannot absorb a per-channel scale"
        consts = [i for i in (1, 2) if i < len(node.inputs) and node.inputs[i].name]
        if any(not isinstance(node.inputs[i], gs.Constant) or np.asarray(node.inputs[i].values).size != k
               for i in consts):
            return "LayerNormalization whose scale/bias are not constant per-channel vectors"
        return [node], [(node, i) for i in consts]
    if node.op == "Mul":
        index = _channel_constant(node, k)
        if index is None:
            return "Mul before the MatMul is not by a per-channel constant"
        return [node], [(node, index)]
    if node.op == "Add":
        index = _channel_constant(node, k)
        mul = producer(node.inputs[1 - index]) if index is not None else None
        gamma = _channel_constant(mul, k) if mul is not None and mul.op == "Mul" else None
        if gamma is None:
            return "Add before the MatMul is not the Mul/Add affine of a LayerNorm"
        return [mul, node], [(mul, gamma), (node, index)]
    return f"{node.op} before the MatMul cannot absorb a per-channel scale (needs LayerNorm or a Mul/Add by constants)"


def _value_chain(tensor, shapes: dict, outputs: set):
    """(chain, slots, V) for an attention output P V (through the head layout ops) whose channels are
    the value projection's: x/s there is P (x W_v / s + b_v / s), the columns of W_v and b_v divided by
    s (per output channel, so W_v's INT8 is the same); None when `tensor` is not one."""
    path = value_path(tensor, shapes, outputs)
    if path is None:
        return None
    proj = path.projection
    bias = [proj.bias[0]] if proj.bias else []
    chain = [proj.matmul, *bias, *proj.layout, path.attention, *path.layout]
    return chain, [(proj.matmul, 1), *([proj.bias] if proj.bias else [])], proj.output


# ---- choosing the scale -----------------------------------------------------------------------

def candidate_scale(absmax: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """s = a^alpha / w^(1-alpha) per channel; 1 where a channel never fires or has no weight."""
    live = (absmax > 0) & (weight_max > 0)
    s = np.ones_like(absmax, dtype=np.float64)
    s[live] = absmax[live].astype(np.float64) ** alpha / weight_max[live].astype(np.float64) ** (1.0 - alpha)
    return np.clip(s, *_SCALE_LIMITS).astype(np.float32)


class LayerProbe:
    """The sampled calibration rows of a site and the float outputs of its MatMuls on them, computed
    once; `error(s)` is then what INT8 does to those MatMuls with smoothing scale s (None: none).
    `upstream`: an attention site's V (ctx = P V): V/s is quantized too, and its error reaches the
    MatMuls through P; counted as if P passed it on whole (at most that, since P's rows average)."""

    def __init__(self, stats: ChannelStats, weights: list[np.ndarray], fmt, qmax: int,
                 upstream: ChannelStats | None = None):
        self.stats, self.weights, self.fmt, self.qmax, self.upstream = stats, weights, fmt, qmax, upstream
        self.rows = stats.rows
        self.refs = [self.rows @ w for w in weights]
        self.signal = sum(float(np.sum(np.square(r, dtype=np.float64))) for r in self.refs)
        if upstream is not None:
            self.up_signal = sum(float(np.sum(np.square(upstream.rows @ w, dtype=np.float64))) for w in weights)

    def _quantized(self, stats: ChannelStats, s: np.ndarray) -> np.ndarray:
        """x/s quantized per tensor in `fmt` with its min/max range over all the calibration rows."""
        lo, hi = float(np.min(stats.lo / s)), float(np.max(stats.hi / s))
        a_scale, zero_point = activation_params(lo, hi, self.fmt)
        return fake_quantize(stats.rows / s, a_scale, zero_point, symmetric=self.fmt.symmetric, bits=self.fmt.bits)

    def error(self, scale: np.ndarray | None) -> float:
        """Relative squared error: x/s quantized, sW per output channel, against float x W (plus, with
        `upstream`, V/s quantized times sW against V/s times sW)."""
        s = np.ones(len(self.stats.lo), np.float32) if scale is None else scale
        xq = self._quantized(self.stats, s)
        noise, up_noise = 0.0, 0.0
        for w, ref in zip(self.weights, self.refs):
            qw = quantize_weight(w * s[:, None], 1, self.qmax)
            diff = xq @ (qw.values.astype(np.float32) * qw.scale[None, :]) - ref
            noise += float(np.sum(np.square(diff, dtype=np.float64)))
            if self.upstream is not None:
                up = (self._quantized(self.upstream, s) - self.upstream.rows / s) @ (w * s[:, None])
                up_noise += float(np.sum(np.square(up, dtype=np.float64)))
        error = noise / self.signal if self.signal > 0 else 0.0
        if self.upstream is not None and self.up_signal > 0:
            error += up_noise / self.up_signal
        return error


def best_scale(site: Site, stats: ChannelStats, alphas, fmt, qmax: int,
               upstream: ChannelStats | None = None) -> Choice:
    """The alpha whose scale gives the lowest measured INT8 error (alpha None: no candidate beats none)."""
    weights = [r.kn() for r in site.readers]
    weight_max = np.max([np.abs(w).max(1) for w in weights], axis=0)
    probe = LayerProbe(stats, weights, fmt, qmax, upstream)
    before = probe.error(None)
    best = Choice(None, None, before, before)
    for alpha in alphas:
        s = candidate_scale(stats.absmax, weight_max, alpha)
        error = probe.error(s)
        best.tried[f"{alpha:g}"] = error
        if error < best.error_after:
            best.alpha, best.scale, best.error_after = float(alpha), s, error
    return best


def fold_mode(site: Site, fold: str = "insert") -> str:
    """How 1/s gets in: `in-place` (into the producer's constants), `duplicate` (into a copy of the
    producer, for the MatMuls, when x has other readers) or `insert` (a new Mul before the MatMuls:
    when x has other readers and fold=insert, or the producer's constant is a scalar - scalars are what
    runtime fusions match, GELU's x0.5 among them, and a per-channel vector there unfused GELU in ORT)."""
    if any(np.asarray(node.inputs[index].values).size == 1 for node, index in site.slots):
        return "insert"
    if site.others:
        return "duplicate" if fold == "duplicate" else "insert"
    return "in-place"


def apply_scale(graph, site: Site, s: np.ndarray, names: NameGen, mode: str) -> None:
    """x -> x / s as `mode` says (see fold_mode), and W -> s W in every reader."""
    import onnx_graphsurgeon as gs

    chain, slots = site.chain, site.slots
    if mode == "insert":
        slots = []
        smoothed = gs.Variable(names(f"{site.name}_smoothed"), dtype=site.tensor.dtype, shape=site.tensor.shape)
        inverse = gs.Constant(names(f"{site.name}_smooth_inverse"), (1.0 / s).astype(np.float32))
        graph.nodes.append(gs.Node("Mul", names(f"{node_key(chain[-1])}_smooth"), inputs=[site.tensor, inverse],
                                   outputs=[smoothed]))
        for reader in site.readers:
            reader.node.inputs[0] = smoothed
    elif mode == "duplicate":
        copies = {}
        for node in chain:
            inputs = [copies[id(producer(t))].outputs[0] if producer(t) is not None and id(producer(t)) in copies
                      else t for t in node.inputs]
            out = gs.Variable(names(f"{node.outputs[0].name}_smoothed"), dtype=node.outputs[0].dtype,
                              shape=node.outputs[0].shape)
            copy = gs.Node(node.op, names(f"{node_key(node)}_smoothed"), attrs=dict(node.attrs), inputs=inputs,
                           outputs=[out])
            graph.nodes.append(copy)
            copies[id(node)] = copy
        slots = [(copies[id(n)], i) for n, i in slots]
        smoothed = copies[id(chain[-1])].outputs[0]
        for reader in site.readers:
            reader.node.inputs[0] = smoothed
    for node, index in slots:
        c = node.inputs[index]
        values = np.asarray(c.values, np.float32)
        shape = values.shape[:-1] + (len(s),) if values.ndim else (len(s),)
        node.inputs[index] = gs.Constant(names(f"{c.name}_smoothed"), (np.broadcast_to(values, shape) / s)
                                         .astype(np.float32))
    for reader in site.readers:
        w = np.asarray(reader.weight.values, np.float32)
        scaled = w * (s[:, None] if reader.k_axis == 0 else s[None, :])
        reader.node.inputs[1] = gs.Constant(names(f"{reader.weight.name}_smoothed"), scaled.astype(np.float32))
