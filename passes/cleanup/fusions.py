"""Per-channel constants folded into the node before them: Conv or BatchNormalization -> Mul(c)
or Add(c).

Exporters write a BatchNormalization out as Mul and Add (tf2onnx), follow one with a separate
scale layer (Caffe2), and biases with an Add. When the constant is one value per channel, it goes
into the weights and bias: conv(x, W) * s == conv(x, W * s), conv(x, W, b) + t == conv(x, W, b + t)
and the same for BatchNormalization's scale and bias, to float rounding.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.pipeline.pass_base import PassReport


def _per_channel(c, rank: int, channels: int) -> np.ndarray | None:
    """c as one float per output channel, if it broadcasts against [N, C, ...] only along C."""
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


def _fuse(conv, consumer, names, facts) -> str | None:
    """Fold `consumer` (Mul or Add with a constant) into `conv`; a refusal's reason, or None."""
    import onnx_graphsurgeon as gs

    w = conv.inputs[1] if len(conv.inputs) > 1 else None
    b = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2].name else None
    if not isinstance(w, gs.Constant) or (b is not None and not isinstance(b, gs.Constant)):
        return "weights are not constant"
    y = conv.outputs[0]
    c = consumer.inputs[1] if consumer.inputs[0] is y else consumer.inputs[0]
    weights = np.asarray(w.values)
    if weights.dtype.kind != "f" or weights.ndim < 3:
        return "weights are not float"
    channels = weights.shape[0] if conv.op == "Conv" else weights.shape[1] * int(conv.attrs.get("group", 1))
    values = _per_channel(c, weights.ndim, channels)
    if values is None or values.dtype != weights.dtype:
        return "the constant is not one value per output channel"
    bias = np.asarray(b.values) if b is not None else np.zeros(channels, weights.dtype)
    if consumer.op == "Mul":
        if conv.op != "Conv":
            return "a scale does not fold into ConvTranspose weights group-wise here"
        scale = values.reshape((-1,) + (1,) * (weights.ndim - 1))
        conv.inputs[1] = gs.Constant(names(w.name + "_scaled"), (weights * scale).astype(weights.dtype))
        bias = bias * values if b is not None else None
    else:
        bias = bias + values
    if bias is not None:
        bias_t = gs.Constant(names((b.name if b is not None else conv.outputs[0].name) + "_bias"),
                             np.ascontiguousarray(bias, dtype=weights.dtype))
        if len(conv.inputs) > 2:
            conv.inputs[2] = bias_t
        else:
            conv.inputs.append(bias_t)
    out = consumer.outputs[0]
    consumer.outputs.clear()
    consumer.inputs.clear()
    conv.outputs[0] = out
    return None


def _fuse_batchnorm(bn, consumer, names, facts) -> str | None:
    """BatchNormalization -> Mul/Add by a per-channel constant: scale and bias absorb it."""
    import onnx_graphsurgeon as gs

    if len(bn.inputs) != 5 or not all(isinstance(t, gs.Constant) for t in bn.inputs[1:]):
        return "parameters are not constant"
    if int(bn.attrs.get("training_mode", 0)):
        return "training mode"
    y = bn.outputs[0]
    c = consumer.inputs[1] if consumer.inputs[0] is y else consumer.inputs[0]
    scale, bias = np.asarray(bn.inputs[1].values), np.asarray(bn.inputs[2].values)
    if scale.ndim != 1 or scale.dtype.kind != "f":
        return "parameters are not float vectors"
    rank = facts.rank(bn.inputs[0])
    if rank is None or rank < 2:
        return "input rank unknown"
    values = _per_channel(c, rank, scale.size)
    if values is None or values.dtype != scale.dtype:
        return "the constant is not one value per channel"
    if consumer.op == "Mul":
        bn.inputs[1] = gs.Constant(names(bn.inputs[1].name + "_scaled"), (scale * values).astype(scale.dtype))
        bias = bias * values
    else:
        bias = bias + values
    bn.inputs[2] = gs.Constant(names(bn.inputs[2].name + "_shifted"), np.ascontiguousarray(bias, dtype=scale.dtype))
    out = consumer.outputs[0]
    consumer.outputs.clear()
    consumer.inputs.clear()
    bn.outputs[0] = out
    return None


def fuse_channel_constants(graph, facts, report: PassReport, names) -> int:
    """Conv/BatchNormalization -> Mul/Add by a per-channel constant -> one node; returns how many."""
    outputs = {id(t) for t in graph.outputs}
    fused = 0
    for conv in list(graph.nodes):
        if conv.op not in ("Conv", "ConvTranspose", "BatchNormalization") or conv.domain not in (None, "", "ai.onnx"):
            continue
        if not conv.outputs or any(t.outputs or id(t) in outputs for t in conv.outputs[1:]):
            continue
        y = conv.outputs[0]
        if id(y) in outputs or len(y.outputs) != 1:
            continue
        consumer = y.outputs[0]
        if consumer.op not in ("Mul", "Add") or len(consumer.inputs) != 2 or consumer.inputs[0] is consumer.inputs[1]:
            continue
        try:
            reason = (_fuse_batchnorm if conv.op == "BatchNormalization" else _fuse)(conv, consumer, names, facts)
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            reason = f"could not be read ({type(exc).__name__})"
        if reason is None:
            fused += 1
            report.count(f"{'batchnorm' if conv.op == 'BatchNormalization' else 'conv'}_{consumer.op.lower()}_fused")
    return fused
