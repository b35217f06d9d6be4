"""Take attention's key and value biases off the per-token path; exact.

    softmax(q (k + b_k)^T + mask) = softmax(q k^T + mask)   (q . b_k is the same for every key)
    P (v + b_v) = P v + b_v                                 (each row of a softmax sums to one)
    (ctx + b_v) W_o + b_o = ctx W_o + (b_v W_o + b_o)

so the key bias is dropped and the value bias moves, through the head Reshape/Transpose, into the
output projection's bias. ONNX Runtime leaves the bias Add after an INT8 MatMul (MatMulIntegerToFloat)
unfused; without it the K and V projections feed their QuantizeLinear directly and run as QLinearMatMul:
per layer two Adds and two QuantizeLinear fewer, about what smooth-quant's inserted Muls cost on MiniLM.
K and V, quantized per tensor, also lose a per-channel offset from their ranges.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import NameGen, node_key, producer, replace_uses
from onnxcomp.passes.qdq.attention_paths import (
    SHAPE_READERS,
    channel_bias,
    constant_index,
    forward_layout,
    only_reader,
    projection_ids,
    trace_projection,
    value_path,
)
from onnxcomp.passes.qdq.attention_scale import scalar_factor


def fold_attention_biases(graph, shapes: dict) -> list[dict]:
    """Drop every key bias and move every value bias as above, in place (`shapes`: probe_shapes of
    the graph's model). Returns one row per bias folded."""
    outputs = {t.name for t in graph.outputs}
    names = NameGen(graph)
    done = []
    for node in list(graph.nodes):
        if node.op != "Softmax" or not _over_last_axis(node, shapes, graph.opset):
            continue
        scores = _scores_matmul(node.inputs[0], outputs)
        if scores is not None:
            proj = trace_projection(scores.inputs[1], outputs)
            ids = projection_ids(proj, shapes) if proj is not None and channel_bias(proj) is not None else None
            if ids is not None and ids.ndim >= 2 and np.all(ids == ids[..., :1]):  # same channel for every key
                done.append({"bias": _remove_bias(proj), "kind": "key dropped", "projection": node_key(proj.matmul)})
        for reader in list(node.outputs[0].outputs):
            if reader.op == "MatMul" and reader.inputs[0] is node.outputs[0]:
                row = _move_value_bias(reader, shapes, outputs, names)
                if row:
                    done.append(row)
    if done:
        graph.cleanup().toposort()
    return done


def _over_last_axis(node, shapes: dict, opset: int | None) -> bool:
    shape = shapes.get(node.inputs[0].name)
    if not shape:
        return False
    axis = int(node.attrs.get("axis", -1 if (opset or 13) >= 13 else 1))
    return axis in (-1, len(shape) - 1)


def _scores_matmul(t, outputs: set, depth: int = 0):
    """The activation x activation MatMul whose output reaches `t` through Adds and scalar Mul/Div
    only (each tensor on the way read once): a per-row constant in it stays one."""
    import onnx_graphsurgeon as gs

    node = producer(t)
    if node is None or depth > 6 or not only_reader(t, outputs):
        return None
    if node.op == "MatMul":
        return None if any(isinstance(x, gs.Constant) for x in node.inputs) else node
    found = scalar_factor(node)
    if found is not None:
        return _scores_matmul(node.inputs[found[0]], outputs, depth + 1)
    if node.op == "Add" and len(node.inputs) == 2:
        hits = [m for m in (_scores_matmul(x, outputs, depth + 1) for x in node.inputs) if m is not None]
        return hits[0] if len(hits) == 1 else None
    return None


def _move_value_bias(attention, shapes: dict, outputs: set, names: NameGen) -> dict | None:
    _, end = forward_layout(attention.outputs[0], outputs)
    readers = [c for c in end.outputs if c.op not in SHAPE_READERS]
    if len(readers) != 1 or readers[0].op != "MatMul" or readers[0].inputs[0] is not end:
        return None
    out_proj = readers[0]
    path = value_path(end, shapes, outputs)
    b_v = None if path is None or path.attention is not attention else channel_bias(path.projection)
    if b_v is None:
        return None
    result = out_proj.outputs[0]
    adds = [c for c in result.outputs if c.op not in SHAPE_READERS]
    if not only_reader(result, outputs) or adds[0].op != "Add" or constant_index(adds[0]) is None:
        return None
    add, index = adds[0], constant_index(adds[0])
    b_o = np.asarray(add.inputs[index].values)
    w_o = np.asarray(out_proj.inputs[1].values, np.float64)
    if b_o.dtype != np.float32 or b_o.shape != (w_o.shape[1],):
        return None
    import onnx_graphsurgeon as gs

    moved = b_o.astype(np.float64) + b_v.astype(np.float64) @ w_o
    add.inputs[index] = gs.Constant(names(f"{add.inputs[index].name}_with_value_bias"), moved.astype(np.float32))
    return {"bias": _remove_bias(path.projection), "kind": "value moved", "projection": node_key(path.projection.matmul),
            "into": node_key(add)}


def _remove_bias(proj) -> str:
    """Take the projection's bias Add out (its readers read the MatMul); returns the bias's name."""
    add, index = proj.bias
    name = add.inputs[index].name
    replace_uses(add.outputs[0], add.inputs[1 - index])
    add.outputs.clear()
    return name
