"""The readers of pruned channels refitted on the sample data, so the kept channels make up for the removed ones.

A reader Y = X W that loses input positions keeps K. Its kept rows that best give the original output
back on the sample rows are W'_K = (C_KK + lambda I)^-1 (C_K: W + lambda W_K), with C = E[x x^T] over the rows (the real
tokens' rows where the data pads its sequences, onnxcomp.measure.padding): what the removed channels
carried, as far as it correlates with the kept ones, the kept ones now carry. lambda (RIDGE of the mean
diagonal of C_KK) pulls the fit towards the rows as they were, so a few hundred sample rows do not overfit it. MatMul and Gemm readers of a
2-D constant they read directly are refitted; other readers keep their sliced weights. One run of the
model before pruning, over the data (input_statistics.py: shared with importance=activation).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import node_key

RIDGE = 1.0


def refit_readers(graph, plan, inputs) -> list[str]:
    """Rewrite, in place and before `plan` is applied, the kept rows of every refittable reader's weight
    (full size: the plan's slicing then keeps them); the readers' node keys. `inputs`: the
    input_statistics.ReaderInputs of the model `graph` is before pruning (the moments come from there)."""
    import onnx_graphsurgeon as gs

    tensors = graph.tensors()
    found = []  # (node, constant, kept rows, transposed)
    for s in plan.slices:
        t = tensors.get(s["tensor"])
        if not isinstance(t, gs.Constant) or len(t.outputs) != 1 or s.get("conv_groups"):
            continue
        node = t.outputs[0]
        transposed = _reads_transposed(node, t)
        if transposed is not None and s["axis"] == (1 if transposed else 0):
            found.append((node, t, np.asarray(s["keep"], dtype=np.int64), transposed))
    if not found:
        return []
    names = sorted({node.inputs[0].name for node, *_ in found})
    moments = inputs.moments(names)
    refitted = []
    for node, t, keep, transposed in found:
        c = moments.get(node.inputs[0].name)
        w = np.asarray(t.values, dtype=np.float64)
        w = w.T if transposed else w  # inputs x outputs
        if c is None or c.shape != (len(w), len(w)):
            continue
        ckk = c[np.ix_(keep, keep)]
        ridge = RIDGE * max(float(np.mean(np.diag(ckk))), 1e-12) * np.eye(len(keep))
        new = w.copy()
        new[keep] = np.linalg.solve(ckk + ridge, c[keep] @ w + ridge @ w[keep])  # pulled towards the kept rows
        t.values = (new.T if transposed else new).astype(np.asarray(t.values).dtype)
        refitted.append(node_key(node))
    return refitted


def _reads_transposed(node, constant) -> bool | None:
    """False for X W (MatMul, Gemm), True for Gemm's transB, None for any other reader."""
    if len(node.inputs) < 2 or node.inputs[1] is not constant or np.ndim(constant.values) != 2:
        return None
    if node.op == "MatMul":
        return False
    if node.op == "Gemm" and not node.attrs.get("transA", 0):
        return bool(node.attrs.get("transB", 0))
    return None

