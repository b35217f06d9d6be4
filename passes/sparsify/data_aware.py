"""Run the OBS reconstruction layer by layer on sample data, each layer seeing the inputs the
already-sparsified layers before it produce (SparseGPT's sequential order)."""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.sparsify.obs import (
    conv_hessian,
    dense_hessian,
    from_matrix,
    hessian_rows,
    one_blas_thread,
    prune_matrix,
    supported,
    to_matrix,
)


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


def capture_batches(graph, tensor_name: str, data, batch: int = 32):
    """Yield an intermediate tensor's values batch by batch, from the graph as it is now.

    `data` is Samples: calls merge up to `batch` samples where they can, else run as they are (a
    fixed batch is never split). Streaming keeps memory at one batch of activations, whatever the
    sample count.
    """
    import onnx

    from onnxcomp.graph.convert import to_model
    from onnxcomp.measure.runtime import run, session

    model = to_model(graph)
    if tensor_name not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor_name))
    sess = session(model)
    for feeds in data.batches(batch):
        yield run(sess, feeds, [tensor_name])[tensor_name]


def sparsify_with_data(graph, cand, values: np.ndarray, data, *, ratio=None, nm=None) -> np.ndarray:
    """Pruned (and reconstructed) values of `cand` with the graph's current upstream weights (`data`: Samples)."""
    node, use = cand.node, cand.uses[0]
    h = None
    trans_a = bool(node.attrs.get("transA", 0)) and use.op == "Gemm"
    count = max(1, data.samples)
    budget = hessian_rows(values.shape) if use.op == "Conv" else None
    for index, x in enumerate(capture_batches(graph, node.inputs[0].name, data)):
        with one_blas_thread():
            if use.op == "Conv":
                rows = -(-budget * len(x) // count)  # this batch's share of the row budget
                part = conv_hessian(x, values.shape, node.attrs, max_rows=rows, seed=index)
            else:
                part = dense_hessian(x, trans_a)
        h = part if h is None else h + part
    mat = to_matrix(values, use.op, use.axis)
    pruned = prune_matrix(mat, h, ratio=ratio, nm=nm)
    return from_matrix(pruned, use.op, use.axis, values.shape).astype(values.dtype)
