"""Counting a model: nodes, initializers, parameters and MACs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from onnxcomp.graph.shapes import infer_shapes

# Constants of these types are shapes, indices and flags, not learned parameters.
_NON_PARAM_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL,
                    onnx.TensorProto.STRING}


def _is_parameter_dtype(dtype) -> bool:
    """Float and small-int constants are parameters; int32/int64 are shapes and indices.
    graphsurgeon gives types numpy lacks (bfloat16, float8) as ONNX enums: those count too."""
    try:
        kind = np.dtype(dtype)
    except TypeError:
        return dtype not in _NON_PARAM_TYPES
    return kind.kind in "fciu" and kind not in (np.dtype(np.int64), np.dtype(np.int32))


def graph_counts(graph) -> dict:
    """Node, initializer and parameter counts of a gs.Graph (O(nodes + tensors))."""
    import onnx_graphsurgeon as gs

    constants = {}
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                constants[t.name] = t
    params = 0
    for t in constants.values():
        if _is_parameter_dtype(t.dtype):
            params += int(np.prod(t.shape)) if t.shape is not None else 0
    return {"nodes": len(graph.nodes), "initializers": len(constants), "params": params}


def model_counts(model: onnx.ModelProto) -> dict:
    ops = Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type not in _NON_PARAM_TYPES)
    return {"nodes": len(model.graph.node), "initializers": len(model.graph.initializer),
            "params": params, "ops": dict(sorted(ops.items()))}


def _known(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d > 0 for d in shape)


def estimate_macs(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict:
    """Multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul where shapes are known.

    Symbolic dims are fixed to 1 unless given, so figures are per sample.
    """
    shapes = infer_shapes(model, dims)
    total, by_op, unknown = 0, Counter(), []
    for node in model.graph.node:
        op = node.op_type
        if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        ins = [shapes.get(i) for i in node.input]
        out = shapes.get(node.output[0])
        macs = None
        if op == "Conv" and len(ins) > 1 and _known(out) and _known(ins[1]):
            macs = int(np.prod(out)) * int(np.prod(ins[1][1:]))
        elif op == "ConvTranspose" and _known(ins[0]) and _known(ins[1]):
            macs = int(np.prod(ins[0])) * int(np.prod(ins[1][1:]))
        elif op == "Gemm" and _known(ins[0]) and _known(out):
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            k = ins[0][0] if trans_a else ins[0][1]
            macs = int(np.prod(out)) * int(k)
        elif op == "MatMul" and _known(ins[0]) and _known(out):
            macs = int(np.prod(out)) * int(ins[0][-1])
        if macs is None:
            unknown.append(node.name or node.output[0])
        else:
            total += macs
            by_op[op] += macs
    return {"macs": total, "flops": 2 * total, "by_op": dict(by_op), "unknown": unknown}
