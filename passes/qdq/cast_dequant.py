"""INT8 weights a model stores as Cast(float) [-> Sub zero point] -> Mul scale become DequantizeLinear.

Exporters that quantize weights themselves (weight-only INT8 in the wild) write the dequantization
as plain arithmetic. TensorRT rejects an INT8 tensor outside Q/DQ (TRT-32), and insert-qdq would
take the product for an activation and quantize it again, per tensor. A DequantizeLinear of the same
integers with the same scale (per tensor, or per axis as the scale's shape says) computes exactly
the same floats: (q - zp) * scale, with the zero point folded into the INT8 data, which TensorRT
needs symmetric.
"""

from __future__ import annotations

import numpy as np

FLOAT = 1  # onnx.TensorProto.FLOAT


def dequantize_cast_weights(graph) -> list[str]:
    """Rewrite every such chain of `graph` in place; one note per rewritten weight."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.edit import NameGen

    names = NameGen(graph)
    outputs = {id(t) for t in graph.outputs}
    replaced: dict[int, object] = {}  # id(Mul) -> its DequantizeLinear
    dead: set[int] = set()
    notes = []
    for cast in list(graph.nodes):
        found = _chain(cast, outputs, gs)
        if found is None:
            continue
        chain, q, zp, scale = found
        fit = _per_axis(q.shape, scale, zp)
        if fit is None:
            continue
        axis, scale_1d, zp_b = fit
        data = q.astype(np.int32) - zp_b
        if data.min(initial=0) < -128 or data.max(initial=0) > 127:
            continue  # a UINT8 weight whose zero point does not centre it: no symmetric INT8 form
        mul = chain[-1]
        out = mul.outputs[0]
        weight = cast.inputs[0].name
        for node in chain:
            node.inputs.clear()
            node.outputs.clear()
            dead.add(id(node))
        attrs = {} if axis is None else {"axis": axis}
        replaced[id(mul)] = gs.Node(
            "DequantizeLinear", names(f"{weight}_DequantizeLinear"), attrs=attrs,
            inputs=[gs.Constant(names(f"{weight}_int8"), data.astype(np.int8)),
                    gs.Constant(names(f"{weight}_dq_scale"), scale_1d),
                    gs.Constant(names(f"{weight}_dq_zero_point"), np.zeros(scale_1d.shape, np.int8))],
            outputs=[out])
        out.dtype = np.float32
        notes.append(f"{weight}: {q.dtype.name.upper()} weight dequantized by "
                     f"{'+'.join(n.op for n in chain)} became DequantizeLinear"
                     f"{'' if axis is None else f' (axis {axis})'}")
    if replaced:
        graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if id(n) not in dead or id(n) in replaced]
    return notes


def _chain(cast, outputs: set, gs):
    """(nodes Cast[, Sub], Mul; integer data; float zero point; float scale) if `cast` starts the pattern."""
    if cast.op != "Cast" or int(cast.attrs.get("to", 0)) != FLOAT or not cast.inputs or not cast.outputs:
        return None
    data = cast.inputs[0]
    if not isinstance(data, gs.Constant) or np.asarray(data.values).dtype not in (np.int8, np.uint8):
        return None
    chain, t, zp = [cast], cast.outputs[0], np.zeros((), np.float32)
    nxt = _only_reader(t, outputs)
    if nxt is not None and nxt.op == "Sub" and nxt.inputs[0] is t:
        zp = _constant(nxt.inputs[1], gs)
        if zp is None or not np.all(zp == np.round(zp)):
            return None
        chain.append(nxt)
        t = nxt.outputs[0]
        nxt = _only_reader(t, outputs)
    if nxt is None or nxt.op != "Mul" or len(nxt.inputs) != 2:
        return None
    other = nxt.inputs[1] if nxt.inputs[0] is t else nxt.inputs[0]
    scale = _constant(other, gs)
    if other is t or scale is None or scale.dtype != np.float32 or not np.all(np.isfinite(scale)) \
            or not np.all(scale > 0):
        return None
    return [*chain, nxt], np.asarray(data.values), zp, scale


def _only_reader(t, outputs: set):
    return t.outputs[0] if len(t.outputs) == 1 and id(t) not in outputs else None


def _constant(t, gs):
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _per_axis(shape: tuple, scale: np.ndarray, zp: np.ndarray):
    """(axis or None, scale as DequantizeLinear takes it, zero point broadcast to the data) when the
    scale varies along at most one axis of the data and broadcasting keeps the data's shape."""
    rank = len(shape)
    if scale.ndim > rank or zp.ndim > rank:
        return None
    s = scale.reshape((1,) * (rank - scale.ndim) + scale.shape)
    z = zp.reshape((1,) * (rank - zp.ndim) + zp.shape)
    varying = [a for a in range(rank) if s.shape[a] != 1]
    if any(s.shape[a] != shape[a] for a in varying) or len(varying) > 1:
        return None
    if any(z.shape[a] != 1 and (a not in varying or z.shape[a] != shape[a]) for a in range(rank)):
        return None
    zp_b = np.broadcast_to(z, shape).astype(np.int32)
    if not varying:
        return None, np.asarray(s.reshape(()), np.float32), zp_b
    axis = varying[0]
    return axis, np.ascontiguousarray(s.reshape(shape[axis]), np.float32), zp_b
