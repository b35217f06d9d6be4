"""Replace one weighted node by its two factors, keeping the node's name, output and bias.

    MatMul(x, W)       -> MatMul(MatMul(x, P), Q)
    Gemm(x, B, C)      -> Gemm(MatMul(x, P), Q, C)                 (transB dropped, alpha/beta kept)
    Conv(x, W, b)      -> Conv(Conv(x, P as r kxk filters), Q as n 1x1 filters, b)
"""

from __future__ import annotations

import numpy as np


def factorize(graph, node, p: np.ndarray, q: np.ndarray, weight: np.ndarray, weight_name: str, names) -> None:
    """Rewrite `node` in place with P (m x r) and Q (r x n) replacing `weight` (as the node reads it);
    `names` gives fresh names (NameGen)."""
    import onnx_graphsurgeon as gs

    dtype = weight.dtype
    key = node.name or node.outputs[0].name
    mid = gs.Variable(names(f"{key}/lowrank"), dtype=dtype)
    r = p.shape[1]
    if node.op == "Conv":
        spatial = tuple(weight.shape[2:])
        first_w = p.T.reshape((r, -1) + spatial)
        first = gs.Node("Conv", names(f"{key}/lowrank_a"), dict(node.attrs), [node.inputs[0],
                        gs.Constant(names(f"{weight_name}/lowrank_a"), first_w.astype(dtype))], [mid])
        first.attrs["kernel_shape"] = list(spatial)
        node.attrs.update(kernel_shape=[1] * len(spatial), pads=[0] * (2 * len(spatial)), strides=[1] * len(spatial),
                          dilations=[1] * len(spatial))
        node.attrs.pop("auto_pad", None)
        second_w = q.T.reshape((q.shape[1], r) + (1,) * len(spatial))
    else:
        first = gs.Node("MatMul", names(f"{key}/lowrank_a"), {}, [node.inputs[0],
                        gs.Constant(names(f"{weight_name}/lowrank_a"), p.astype(dtype))], [mid])
        second_w = q
        if node.op == "Gemm":
            node.attrs["transB"] = 0
    node.inputs[0] = mid
    node.inputs[1] = gs.Constant(names(f"{weight_name}/lowrank_b"), np.ascontiguousarray(second_w).astype(dtype))
    graph.nodes.append(first)
