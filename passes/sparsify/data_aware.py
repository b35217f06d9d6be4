"""Run the OBS reconstruction layer by layer on sample data, each layer seeing the inputs the
already-sparsified layers before it produce (SparseGPT's sequential order)."""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.sparsify.obs import conv_hessian, dense_hessian, from_matrix, prune_matrix, supported, to_matrix


def refusal(cand, values: np.ndarray) -> str | None:
    """Why `cand` falls back to plain magnitude (None when the data-aware path applies)."""
    if len(cand.uses) != 1:
        return "shared by several nodes"
    node, use = cand.node, cand.uses[0]
    if use.op == "Conv" and node.inputs[1] is not cand.constant:
        return "weight reaches the Conv through other ops"
    if use.op not in ("Conv", "Gemm", "MatMul"):
        return f"{use.op} has no data-aware path"
    if use.op == "Conv" and use.axis != 1:
        return "Conv weight reaches the node transposed"
    if cand.slot != 1:
        return "weight is the left operand"
    return supported(use.op, values, node.attrs)


def capture(graph, tensor_name: str, data: dict, batch: int = 64) -> np.ndarray:
    """Values of an intermediate tensor on `data`, from the graph as it is now."""
    import onnx

    from onnxcomp.io import to_model
    from onnxcomp.runtime import run_batched, session

    model = to_model(graph)
    if tensor_name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor_name))
    sess = session(model)
    return run_batched(sess, data, batch, outputs=[tensor_name])[tensor_name]


def sparsify_with_data(graph, cand, values: np.ndarray, data: dict, *, ratio=None, nm=None) -> np.ndarray:
    """Pruned (and reconstructed) values of `cand` with the graph's current upstream weights."""
    node, use = cand.node, cand.uses[0]
    x = capture(graph, node.inputs[0].name, data)
    if use.op == "Conv":
        h = conv_hessian(x, values.shape, node.attrs)
    else:
        h = dense_hessian(x, bool(node.attrs.get("transA", 0)) and use.op == "Gemm")
    mat = to_matrix(values, use.op, use.axis)
    pruned = prune_matrix(mat, h, ratio=ratio, nm=nm)
    return from_matrix(pruned, use.op, use.axis, values.shape).astype(values.dtype)
