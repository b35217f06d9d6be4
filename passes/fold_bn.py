"""fold-bn: fold inference BatchNormalization into the Conv/ConvTranspose/Gemm before it."""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import NameGen, is_pass_through
from onnxcomp.graph.toposort import toposort
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

_FOLDABLE = ("Conv", "ConvTranspose", "Gemm")


@register_pass
class FoldBatchNorm(Pass):
    """Fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm that feeds only it (exact)."""

    name = "fold-bn"
    exact = True

    def run(self, graph, ctx: PassContext) -> PassReport:
        report = PassReport()
        names = NameGen(graph)
        batchnorms = [n for n in graph.nodes if n.op == "BatchNormalization"]
        live = _live_nodes(graph) if batchnorms else set()
        for bn in batchnorms:
            reason = _refusal(graph, bn, live)
            if reason:
                report.skip(bn.name or bn.outputs[0].name, reason)
                continue
            producer = _source(graph, bn.inputs[0]).inputs[0]
            reason = _fold(producer, bn, names)
            if reason:
                report.skip(bn.name or bn.outputs[0].name, reason)
                continue
            out = bn.outputs[0]
            bn.outputs.clear()
            producer.outputs[0] = out
            report.count("folded")
            report.count(f"folded_into_{producer.op}")
        for bn, owner in _subgraph_batchnorms(graph):
            report.skip(bn.name or bn.outputs[0].name,
                        f"inside a subgraph of {owner.op} {owner.name!r}; control-flow bodies are left as they are")
        if report.stats.get("folded"):
            toposort(graph.cleanup())
            report.modified = True
        return report


def _subgraph_batchnorms(graph):
    """(BatchNormalization, owning If/Loop/Scan node) pairs at any depth below `graph`."""
    import onnx_graphsurgeon as gs

    stack = [(node, node) for node in graph.nodes]
    while stack:
        node, owner = stack.pop()
        for value in node.attrs.values():
            for sub in (value if isinstance(value, list) else [value]):
                if isinstance(sub, gs.Graph):
                    for inner in sub.nodes:
                        if inner.op == "BatchNormalization":
                            yield inner, owner
                        stack.append((inner, owner))


def _live_nodes(graph) -> set[int]:
    """ids of the nodes some graph output depends on. Dead readers (which cleanup would remove)
    must not block a fold, or fold-bn's result would depend on whether cleanup ran first."""
    live, stack = set(), [t for t in graph.outputs]
    seen = set()
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.inputs:
            if id(node) not in live:
                live.add(id(node))
                stack.extend(node.inputs)
    return live


def _refusal(graph, bn, live: set[int]) -> str | None:
    import onnx_graphsurgeon as gs

    if bn.attrs.get("training_mode", 0):
        return "training_mode=1 (statistics are updated, not constant)"
    if any(t.outputs or t in graph.outputs for t in bn.outputs[1:]):
        return "running-statistics outputs are used"
    if len(bn.inputs) < 5 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:5]):
        return "scale/bias/mean/var are not all constants"
    x = _source(graph, bn.inputs[0])
    if not x.inputs:
        return "input is not produced by a node"
    producer = x.inputs[0]
    if producer.op not in _FOLDABLE:
        return f"input comes from {producer.op}, not {'/'.join(_FOLDABLE)}"
    if sum(id(n) in live for n in x.outputs) > 1 or x in graph.outputs:
        return f"{producer.op} output has other consumers"
    if len(producer.inputs) < 2 or not isinstance(producer.inputs[1], gs.Constant):
        return f"{producer.op} weight is not a constant"
    if len(producer.inputs) > 2 and producer.inputs[2].name and not isinstance(producer.inputs[2], gs.Constant):
        return f"{producer.op} bias is not a constant"
    return None


def _source(graph, x):
    """The tensor behind `x` once pass-through nodes (Identity, inference Dropout) that feed only
    this BatchNormalization are skipped, so fold-bn does not depend on cleanup having run first."""
    while x.inputs and is_pass_through(x.inputs[0]) and len(x.outputs) == 1 and x not in graph.outputs:
        x = x.inputs[0].inputs[0]
    return x


def _array(t, dtype) -> np.ndarray:
    """A constant's values as `dtype` without caching them on the constant.

    Reading `.values` would keep a decoded copy on the old constant until it is collected; on
    big models that doubled the weights held during the pass.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    values = t._values.load() if isinstance(t._values, LazyValues) else t.values
    return np.asarray(values, dtype=dtype)


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel scale s and shift t such that BN(y) = s * y + t."""
    gamma, beta, mean, var = (_array(t, np.float64) for t in bn.inputs[1:5])
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _fold(producer, bn, names) -> str | None:
    import onnx_graphsurgeon as gs

    s, t = _bn_affine(bn)
    weight = producer.inputs[1]
    w = _array(weight, np.float64)
    has_bias = len(producer.inputs) > 2 and producer.inputs[2].name != ""
    op = producer.op
    if op == "Conv":
        out_channels = w.shape[0]
        if out_channels != s.size:
            return f"Conv has {out_channels} output channels, BN has {s.size}"
        w *= s.reshape((-1,) + (1,) * (w.ndim - 1))  # in place: one float64 copy, not two
        new_w = w
        b = _array(producer.inputs[2], np.float64) if has_bias else np.zeros(out_channels)
        new_b = b * s + t
    elif op == "ConvTranspose":
        group = int(producer.attrs.get("group", 1))
        out_channels = w.shape[1] * group
        if out_channels != s.size:
            return f"ConvTranspose has {out_channels} output channels, BN has {s.size}"
        grouped = w.reshape((group, w.shape[0] // group, w.shape[1]) + w.shape[2:])
        scale = s.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        new_w = (grouped * scale).reshape(w.shape)
        b = _array(producer.inputs[2], np.float64) if has_bias else np.zeros(out_channels)
        new_b = b * s + t
    else:  # Gemm: Y = alpha * A' @ B' + beta * C
        if producer.attrs.get("transA", 0) not in (0, 1) or w.ndim != 2:
            return "Gemm weight is not 2-D"
        trans_b = int(producer.attrs.get("transB", 0))
        out_features = w.shape[0] if trans_b else w.shape[1]
        if out_features != s.size:
            return f"Gemm has {out_features} output features, BN has {s.size}"
        new_w = w * (s[:, None] if trans_b else s[None, :])
        beta = float(producer.attrs.get("beta", 1.0))
        c = _array(producer.inputs[2], np.float64) if has_bias else np.zeros(1)
        if c.size not in (1, out_features) or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            return f"Gemm bias shape {c.shape} is not per-feature"
        new_b = (beta * np.broadcast_to(c.reshape(-1), (out_features,))) * s + t
        producer.attrs["beta"] = 1.0
    dtype = np.dtype(weight.dtype)
    producer.inputs[1] = gs.Constant(names(f"{weight.name}_bnfold"), new_w.astype(dtype))
    bias = gs.Constant(names(f"{bn.name or weight.name}_bias_bnfold"), new_b.astype(dtype))
    if has_bias:
        producer.inputs[2] = bias
    else:
        producer.inputs.append(bias)
    return None

