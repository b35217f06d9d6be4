"""ONNX Runtime CPU rules for QDQ models: what fails to load (errors) and what stays unfused (warnings).

ORT fuses DQ -> op -> Q groups into QLinearConv/QLinearMatMul/QGemm/QLinearAdd; a group is fused
only when every input comes from a DQ (bias as INT32), the op's output feeds only Qs (a ReLU in
between is folded when the zero point is the type minimum), and BatchNormalization is folded.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.op_facts import BIASED_OPS
from onnxcomp.passes.qdq.rule_facts import (
    dequantized_from,
    is_activation,
    node_id,
    qdq_facts,
    qdq_nodes,
)
from onnxcomp.pipeline.rules import rule

_FUSED_WITH_OUTPUT_Q = ("Conv", "Add", "Mul", "GlobalAveragePool", "AveragePool")


@rule("ORT-01", targets=("ort",), severity="error", summary="per-axis Q/DQ needs opset >= 13")
def per_axis_opset(index):
    version = index.opset.get("ai.onnx", 0)
    for node in qdq_nodes(index):
        facts = qdq_facts(index, node)
        if version < 13 and facts.scale is not None and facts.scale.size > 1:
            yield (node_id(node), f"per-axis scale at opset {version}; DequantizeLinear gained `axis` in opset 13")


@rule("ORT-02", targets=("ort",), severity="error", summary="scale and zero point agree in shape; scales positive")
def scale_zero_point_shapes(index):
    for node in qdq_nodes(index):
        facts = qdq_facts(index, node)
        if facts.scale is not None and (np.any(~np.isfinite(facts.scale)) or np.any(facts.scale <= 0)):
            yield (node_id(node), "scale has non-positive or non-finite values")
        if facts.scale is not None and facts.zero_point is not None and facts.scale.shape != facts.zero_point.shape:
            yield (node_id(node), f"scale shape {facts.scale.shape} != zero point shape {facts.zero_point.shape}")


@rule("ORT-03", targets=("ort",), severity="error", summary="a Q and the DQ it feeds use the same type")
def pair_types(index):
    for node in qdq_nodes(index):
        if node.op_type != "DequantizeLinear":
            continue
        q = index.producer.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        zq, zd = qdq_facts(index, q).zero_point, qdq_facts(index, node).zero_point
        if zq is not None and zd is not None and zq.dtype != zd.dtype:
            yield (node_id(node), f"Q {node_id(q)} emits {zq.dtype.name} but this DQ reads {zd.dtype.name}")


@rule("ORT-04", targets=("ort",), severity="warning", summary="activations are asymmetric UINT8 on CPU")
def uint8_activations(index):
    count, first = 0, None
    for node in qdq_nodes(index):
        if node.op_type != "QuantizeLinear" or not is_activation(index, node):
            continue
        zp = qdq_facts(index, node).zero_point
        if zp is not None and zp.dtype == np.int8:
            count += 1
            first = first or node_id(node)
    if count:
        yield (first, f"{count} activation Q node(s) use symmetric INT8; ORT CPU fuses fewer ops (ReLU stays "
                      "float) and such models run slower than float; use UINT8 (onnxcomp --target ort)")


@rule("ORT-05", targets=("ort",), severity="warning", summary="quantized ops are fusable (output feeds only Q)")
def fusable_groups(index):
    for node in index.graph.node:
        if node.op_type not in _FUSED_WITH_OUTPUT_Q or not node.input:
            continue
        if dequantized_from(index, node.input[0]) is None:
            continue
        out = node.output[0]
        consumers = index.consumers.get(out, [])
        if len(consumers) == 1 and consumers[0].op_type == "Relu":
            consumers = index.consumers.get(consumers[0].output[0], [])
        if out in index.graph_outputs or not consumers or any(c.op_type != "QuantizeLinear" for c in consumers):
            if node.op_type == "Conv" or consumers:
                others = sorted({c.op_type for c in consumers if c.op_type != "QuantizeLinear"}) or ["graph output"]
                yield (node_id(node), f"{node.op_type} reads DQ inputs but its output feeds {', '.join(others)}; "
                                      f"ORT runs it in float (no QLinear{node.op_type} fusion)")


@rule("ORT-06", targets=("ort",), severity="warning", summary="BatchNormalization is folded before QDQ")
def bn_folded(index):
    for node in index.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        producer = index.producer.get(node.input[0])
        if producer is not None and producer.op_type in BIASED_OPS and any(
                dequantized_from(index, t) is not None for t in producer.input[:2]):
            yield (node_id(node), f"unfolded BatchNormalization after quantized {producer.op_type}; run fold-bn "
                                  "before insert-qdq (about half the int8 speedup is lost)")


@rule("ORT-07", targets=("ort",), severity="warning", summary="Conv/Gemm bias is INT32 behind a DQ")
def int32_bias(index):
    for node in index.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or not node.input[2]:
            continue
        if dequantized_from(index, node.input[0]) is None or dequantized_from(index, node.input[1]) is None:
            continue
        if dequantized_from(index, node.input[2]) is None and node.op_type == "Conv":
            yield (node_id(node), "bias is float; QLinearConv fusion needs an INT32 bias (scale = input scale x "
                                  "weight scale) behind a DequantizeLinear")
