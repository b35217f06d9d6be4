"""Facts about the Q/DQ nodes of a model, shared by the ORT and TensorRT rules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QDQ = ("QuantizeLinear", "DequantizeLinear")


def node_id(node) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class QdqFacts:
    node: object
    scale: np.ndarray | None  # None when not a constant
    zero_point: np.ndarray | None  # None when absent or not a constant
    has_zero_point: bool
    zero_point_constant: bool
    axis: int | None  # set when the scale is per-axis
    on_constant: bool  # the quantized/dequantized data is a constant (a weight)


def qdq_facts(index, node) -> QdqFacts:
    scale = index.constant(node.input[1]) if len(node.input) > 1 else None
    has_zp = len(node.input) > 2 and bool(node.input[2])
    zp = index.constant(node.input[2]) if has_zp else None
    axis = None
    if scale is not None and scale.size > 1:
        axis = int(attr(node, "axis", 1))
    data = node.input[0]
    on_constant = index.constant(data) is not None
    return QdqFacts(node, scale, zp, has_zp, zp is not None, axis, on_constant)


def qdq_nodes(index):
    return [n for n in index.graph.node if n.op_type in QDQ]


def is_activation(index, node) -> bool:
    """A Q on a computed tensor, or a DQ fed by such a Q (not a weight path)."""
    if node.op_type == "QuantizeLinear":
        return index.constant(node.input[0]) is None
    producer = index.producer.get(node.input[0])
    if producer is not None and producer.op_type == "QuantizeLinear":
        return index.constant(producer.input[0]) is None
    return index.constant(node.input[0]) is None


def dequantized_from(index, tensor: str):
    """The DequantizeLinear that produces `tensor`, or None."""
    p = index.producer.get(tensor)
    return p if p is not None and p.op_type == "DequantizeLinear" else None


def quantize_source(index, dq):
    """For DQ fed by a Q: the tensor that Q quantizes (else None)."""
    q = index.producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
