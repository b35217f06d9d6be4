"""Per-channel affine ops folded into the node before them.

Exporters write a BatchNormalization out as Mul and Add (tf2onnx), follow one with a separate
scale layer (Caffe2), and biases with an Add. When the constant is one value per channel it goes
into the weights and bias, to float rounding:
    Conv(x, W, b) * s          -> Conv(x, W * s, b * s)
    Conv(x, W, b) + t          -> Conv(x, W, b + t)
    BatchNormalization(x) * s  -> BatchNormalization with scale * s and B * s (and + t: B + t)
Folding a BatchNormalization into its Conv is fold-bn's job. So that cleanup never leaves fold-bn
new work (a Conv fusion would put a BN right after a Conv), a Mul/Add read by a BN is not fused.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.pipeline.pass_base import PassReport


def _per_channel(c, rank: int, channels: int) -> np.ndarray | None:
    """c as one float per channel, if it broadcasts against [N, C, ...] only along C."""
    import onnx_graphsurgeon as gs

    if not isinstance(c, gs.Constant) or len(c.shape) > rank:
        return None
    try:
        values = np.asarray(c.values)
    except Exception:  # types numpy cannot read
        return None
    if values.dtype.kind != "f":
        return None
    full = (1,) * (rank - values.ndim) + values.shape
    if full[0] != 1 or full[1] not in (1, channels) or any(d != 1 for d in full[2:]):
        return None
    return np.broadcast_to(values.reshape(-1), (channels,)) if values.size in (1, channels) else None


def _constant_other(consumer, y):
    return consumer.inputs[1] if consumer.inputs[0] is y else consumer.inputs[0]


def _inference_batchnorm(bn) -> bool:
    import onnx_graphsurgeon as gs

    if len(bn.inputs) != 5 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
        return False
    if int(bn.attrs.get("training_mode", 0)) or any(t.outputs for t in bn.outputs[1:]):
        return False
    scale, bias = np.asarray(bn.inputs[1].values), np.asarray(bn.inputs[2].values)
    return scale.dtype.kind == "f" and scale.ndim == 1 and bias.shape == scale.shape


def _fuse_conv(conv, consumer, names, facts) -> bool:
    import onnx_graphsurgeon as gs

    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    b = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
    if not isinstance(w, gs.Constant) or (b is not None and not isinstance(b, gs.Constant)):
        return False
    weights = np.asarray(w.values)
    if weights.dtype.kind != "f" or weights.ndim < 3:
        return False
    channels = weights.shape[0]
    if any(c.op == "BatchNormalization" for c in consumer.outputs[0].outputs):
        return False  # fold-bn's: see the module docstring
    values = _per_channel(_constant_other(consumer, conv.outputs[0]), weights.ndim, channels)
    if values is None or values.dtype != weights.dtype:
        return False
    s, t = (values, None) if consumer.op == "Mul" else (None, values)
    bias = np.asarray(b.values) if b is not None else np.zeros(channels, weights.dtype)
    if s is not None:
        scaled = weights * s.reshape((-1,) + (1,) * (weights.ndim - 1))
        conv.inputs[1] = gs.Constant(names(w.name + "_scaled"), scaled.astype(weights.dtype))
        bias = bias * s
    if t is not None:
        bias = bias + t
    if s is not None and b is None and t is None:
        bias = None  # a scale alone leaves a missing bias missing
    if bias is not None:
        bias_t = gs.Constant(names((b.name if b is not None else w.name) + "_bias"),
                             np.ascontiguousarray(bias, dtype=weights.dtype))
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_t
        else:
            conv.inputs.append(bias_t)
    return True


def _fuse_batchnorm(bn, consumer, names, facts) -> bool:
    import onnx_graphsurgeon as gs

    if not _inference_batchnorm(bn):
        return False
    rank = facts.rank(bn.inputs[0])
    scale, bias = np.asarray(bn.inputs[1].values), np.asarray(bn.inputs[2].values)
    values = _per_channel(_constant_other(consumer, bn.outputs[0]), rank, scale.size) if rank and rank >= 2 else None
    if values is None or values.dtype != scale.dtype:
        return False
    if consumer.op == "Mul":
        bn.inputs[1] = gs.Constant(names(bn.inputs[1].name + "_scaled"), (scale * values).astype(scale.dtype))
        bias = bias * values
    else:
        bias = bias + values
    bn.inputs[2] = gs.Constant(names(bn.inputs[2].name + "_shifted"), np.ascontiguousarray(bias, dtype=scale.dtype))
    return True


def fuse_channel_constants(graph, facts, report: PassReport, names) -> int:
    """Apply the fusions above wherever the first node's output has no other reader; returns how many."""
    outputs = {id(t) for t in graph.outputs}
    fused = 0
    for node in list(graph.nodes):
        if node.op not in ("Conv", "BatchNormalization") or node.domain not in (None, "", "ai.onnx"):
            continue
        if not node.outputs:
            continue
        if any(t.outputs or id(t) in outputs for t in node.outputs[1:]):
            continue
        y = node.outputs[0]
        if id(y) in outputs or len(y.outputs) != 1:
            continue
        consumer = y.outputs[0]
        if consumer.op not in ("Mul", "Add") or len(consumer.inputs) != 2 or consumer.inputs[0] is consumer.inputs[1]:
            continue
        try:
            done = (_fuse_batchnorm if node.op == "BatchNormalization" else _fuse_conv)(node, consumer, names, facts)
        except (TypeError, ValueError, KeyError, IndexError):  # odd attributes or shapes: left as they are
            done = False
        if done:
            out = consumer.outputs[0]
            consumer.outputs.clear()
            consumer.inputs.clear()
            node.outputs[0] = out
            fused += 1
            report.count(f"{node.op.lower()}_{consumer.op.lower()}_fused")
    return fused
