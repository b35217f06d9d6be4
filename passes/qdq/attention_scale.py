"""Fold attention's constant score scale (the 1/sqrt(d) Div or Mul after Q K^T) into the query projection; exact.

    scores = (Q K^T) / c,  Q = reshape/transpose(x Wq + bq)  ->  scores = Q' K^T,  Q' from x (Wq/c) + bq/c

ONNX Runtime fuses that scale into its float MatMul (FusedMatMul's alpha) but not into the INT8
MatMulIntegerToFloat, where it stays an elementwise pass over the [batch, heads, seq, seq] scores:
about 1% of MiniLM's INT8 time, which smooth-quant's inserted Muls would otherwise add to. Scaling
commutes with Reshape/Transpose and with the bias Add, and per-tensor INT8 of Q' is the same as of Q,
so the fold costs no accuracy.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import NameGen, node_key, producer, replace_uses
from onnxcomp.passes.qdq.attention_paths import only_reader, trace_projection


def scalar_factor(node) -> tuple[int, float] | None:
    """(index of the data input, factor the node multiplies by) for a Div/Mul by a float scalar constant."""
    import onnx_graphsurgeon as gs

    if node.op not in ("Div", "Mul") or len(node.inputs) != 2:
        return None
    slots = [1] if node.op == "Div" else [0, 1]
    for i in slots:
        c = node.inputs[i]
        if isinstance(c, gs.Constant) and np.asarray(c.values).size == 1 and c.values.dtype == np.float32:
            value = float(np.asarray(c.values).reshape(()))
            if value == 0.0 or not np.isfinite(value) or isinstance(node.inputs[1 - i], gs.Constant):
                return None
            return 1 - i, (1.0 / value if node.op == "Div" else value)
    return None


def fold_attention_scales(graph) -> list[dict]:
    """Fold every scalar scale of an activation x activation MatMul's output into the projection that
    makes one of its operands, in place. Returns one row per fold (the node removed, the weight scaled)."""
    import onnx_graphsurgeon as gs

    names = NameGen(graph)
    outputs = {t.name for t in graph.outputs}
    done = []
    for node in list(graph.nodes):
        found = scalar_factor(node)
        if found is None or node.outputs[0].name in outputs:
            continue
        index, factor = found
        scores = node.inputs[index]
        mm = producer(scores)
        if mm is None or mm.op != "MatMul" or not only_reader(scores, outputs) \
                or any(isinstance(t, gs.Constant) for t in mm.inputs):
            continue
        target = next((p for p in (trace_projection(t, outputs) for t in mm.inputs) if p is not None), None)
        if target is None:
            continue
        proj, bias = target.matmul, target.bias
        w = proj.inputs[1]
        proj.inputs[1] = gs.Constant(names(f"{w.name}_scaled"), (np.asarray(w.values) * np.float32(factor)).astype(np.float32))
        if bias is not None:
            add, i = bias
            b = add.inputs[i]
            add.inputs[i] = gs.Constant(names(f"{b.name}_scaled"), (np.asarray(b.values) * np.float32(factor)).astype(np.float32))
        replace_uses(node.outputs[0], scores)
        node.outputs.clear()
        done.append({"node": node_key(node), "weight": w.name, "projection": node_key(proj), "factor": factor})
    if done:
        graph.cleanup().toposort()
    return done
