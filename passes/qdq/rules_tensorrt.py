"""TensorRT explicit-quantization rules (ids follow ../shared/research/tensorrt-rules.md).

Errors are what TensorRT's ONNX parser or builder rejects; warnings are placements that build but
block a fusion or cost accuracy.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.op_facts import BIASED_OPS, WEIGHTED_OPS, output_axis
from onnxcomp.passes.qdq.rule_facts import (
    attr,
    dequantized_from,
    is_activation,
    node_id,
    qdq_facts,
    qdq_nodes,
    quantize_source,
)
from onnxcomp.pipeline.rules import rule

_QOPERATOR = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
              "QLinearAdd", "QLinearMul", "QGemm", "MatMulIntegerToFloat", "QLinearGlobalAveragePool",
              "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax",
              "QAttention", "DynamicQuantizeMatMul", "QLinearReduceMean", "QLinearWhere")
_FLOAT_TYPES = (np.float32, np.float16)


@rule("TRT-01", targets=("tensorrt",), severity="error", summary="no QOperator/integer ops (QLinearConv, ConvInteger ...)")
def no_qoperator_ops(index):
    for node in index.graph.node:
        if node.op_type in _QOPERATOR:
            yield (node_id(node), f"{node.op_type} is not supported by TensorRT; export QDQ (QuantizeLinear/"
                                  "DequantizeLinear around float ops) instead")


@rule("TRT-02", targets=("tensorrt",), severity="error", summary="Q/DQ models need opset >= 13")
def qdq_opset(index):
    version = index.opset.get("ai.onnx", 0)
    nodes = qdq_nodes(index)
    if nodes and version < 13:
        yield ("model", f"opset {version} with {len(nodes)} Q/DQ nodes; TensorRT needs opset >= 13 for Q/DQ")


@rule("TRT-03", targets=("tensorrt",), severity="error", summary="INT8 only: no UINT8 zero points or quantized data")
def int8_only(index):
    for node in qdq_nodes(index):
        facts = qdq_facts(index, node)
        zp = facts.zero_point
        if _int4_block_weight(index, node, facts):
            continue  # TensorRT 10's weight-only INT4: block-wise DQ of a constant INT4 weight
        if zp is not None and zp.dtype != np.int8:
            if node.op_type == "DequantizeLinear" and zp.dtype == np.int32:
                continue  # INT32 bias: TRT-14
            yield (node_id(node), f"zero point is {zp.dtype.name.upper()}; TensorRT accepts INT8 only")
        elif zp is None and node.op_type == "DequantizeLinear" and facts.on_constant:
            data = index.constant(node.input[0])
            if data is not None and data.dtype not in (np.int8, np.int32):
                yield (node_id(node), f"dequantizes {data.dtype.name.upper()} data; TensorRT accepts INT8 only")


def _int4_block_weight(index, node, facts) -> bool:
    """A DequantizeLinear with block_size of a constant INT4 weight (zero point absent or INT4)."""
    if node.op_type != "DequantizeLinear" or not facts.on_constant or not attr(node, "block_size", 0):
        return False
    data = index.constant(node.input[0])
    kinds = {np.dtype(x.dtype).name for x in (data, facts.zero_point) if x is not None}
    return data is not None and kinds == {"int4"}


@rule("TRT-04", targets=("tensorrt",), severity="error", summary="zero points are all zero (symmetric)")
def zero_points_zero(index):
    for node in qdq_nodes(index):
        zp = qdq_facts(index, node).zero_point
        if zp is not None and np.any(zp != 0):
            yield (node_id(node), f"non-zero zero point ({int(np.ravel(zp)[np.flatnonzero(np.ravel(zp))[0]])}); "
                                  "TensorRT supports symmetric quantization only")


@rule("TRT-05", targets=("tensorrt",), severity="error", summary="zero point present and constant")
def zero_point_present(index):
    for node in qdq_nodes(index):
        facts = qdq_facts(index, node)
        if not facts.has_zero_point:
            yield (node_id(node), "no zero point: ONNX then means UINT8, TensorRT reads INT8; write an explicit "
                                  "INT8 zero point of 0")
        elif not facts.zero_point_constant:
            yield (node_id(node), "zero point is not a constant")


@rule("TRT-06", targets=("tensorrt",), severity="error", summary="scales constant, positive, float")
def scales_constant(index):
    for node in qdq_nodes(index):
        scale = qdq_facts(index, node).scale
        if scale is None:
            yield (node_id(node), "scale is not a constant (initializer or Constant); TensorRT needs static scales")
        elif scale.dtype.type not in _FLOAT_TYPES and scale.dtype.name != "bfloat16":
            yield (node_id(node), f"scale is {scale.dtype.name}; TensorRT needs FP32/FP16/BF16")
        elif np.any(~np.isfinite(scale)) or np.any(scale <= 0):
            yield (node_id(node), "scale has non-positive or non-finite values")


@rule("TRT-07", targets=("tensorrt",), severity="error", summary="activation scales are per-tensor")
def per_tensor_activations(index):
    for node in qdq_nodes(index):
        facts = qdq_facts(index, node)
        if facts.scale is not None and facts.scale.size > 1 and is_activation(index, node):
            yield (node_id(node), f"activation {node.op_type} has {facts.scale.size} scales; TensorRT supports "
                                  "per-tensor activation scales only")


@rule("TRT-08", targets=("tensorrt",), severity="error", summary="per-channel weights on the output-channel axis")
def weight_axis(index):
    for node in index.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dq = dequantized_from(index, node.input[1])
        if dq is None:
            continue
        facts = qdq_facts(index, dq)
        if facts.scale is None or facts.scale.size <= 1 or attr(dq, "block_size", 0):
            continue  # (block-wise scales run along the reduction axis by definition)
        weight = index.constant(dq.input[0])
        if weight is None:
            source = quantize_source(index, dq)
            weight = index.constant(source) if source else None
        if weight is None:
            continue
        axis = facts.axis if facts.axis >= 0 else facts.axis + weight.ndim
        expected = output_axis(node.op_type, {"transB": attr(node, "transB", 0)}, weight.ndim)
        if node.op_type == "MatMul" and weight.ndim != 2:
            yield (node_id(dq), f"per-channel scale on a {weight.ndim}-D MatMul weight; TensorRT needs a 2-D constant")
        elif axis != expected:
            yield (node_id(dq), f"weight of {node.op_type} {node_id(node)} is quantized on axis {axis}; the "
                                f"output-channel axis is {expected}")
        elif facts.scale.size != weight.shape[axis]:
            yield (node_id(dq), f"{facts.scale.size} scales for {weight.shape[axis]} channels")


@rule("TRT-11", targets=("tensorrt",), severity="warning", summary="all inputs of a quantized weighted op are quantized")
def weighted_inputs_quantized(index):
    for node in index.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dq = [_dequantized_through_commuting(index, t) for t in node.input[:2]]
        weight_dq = dequantized_from(index, node.input[1])
        if weight_dq is not None and attr(weight_dq, "block_size", 0):
            continue  # block-wise INT4 weights are weight-only quantization: the activation stays float
        if any(dq) and not all(dq):
            missing = node.input[dq.index(False)]
            yield (node_id(node), f"input {missing!r} is float while the other is quantized; TensorRT runs the "
                                  f"{node.op_type} in float")


_COMMUTING = ("Pad", "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice")


def _dequantized_through_commuting(index, tensor: str) -> bool:
    """A DQ feeds `tensor`, possibly through ops TensorRT moves DQ across (Pad, MaxPool, Reshape ...)."""
    for _ in range(16):
        if dequantized_from(index, tensor) is not None:
            return True
        producer = index.producer.get(tensor)
        if producer is None or producer.op_type not in _COMMUTING or not producer.input:
            return False
        tensor = producer.input[0]
    return False


@rule("TRT-14", targets=("tensorrt",), severity="warning", summary="bias stays float (no INT32 bias DQ)")
def float_bias(index):
    for node in index.graph.node:
        if node.op_type in BIASED_OPS and len(node.input) > 2 and node.input[2]:
            dq = dequantized_from(index, node.input[2])
            if dq is not None:
                yield (node_id(node), "bias is dequantized from INT32; TensorRT quantizes bias itself, keep it float")


@rule("TRT-15", targets=("tensorrt",), severity="warning", summary="residual Add: Q/DQ on the skip branch only")
def residual_add(index):
    for node in index.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        quantized, from_conv = [], []
        for t in node.input:
            dq = dequantized_from(index, t)
            source = quantize_source(index, dq) if dq is not None else t
            producer = index.producer.get(source) if source else None
            quantized.append(dq is not None)
            from_conv.append(producer is not None and producer.op_type in ("Conv", "ConvTranspose", "BatchNormalization"))
        if not any(q and c for q, c in zip(quantized, from_conv)):
            continue
        if all(from_conv) and sum(quantized) == 1:
            continue  # two Conv branches: one of them must carry the Q/DQ
        yield (node_id(node), "a Conv-branch input is quantized; TensorRT fuses Conv+Add only when Q/DQ sits on "
                              "the skip branch alone")


@rule("TRT-16", targets=("tensorrt",), severity="warning", summary="Concat inputs share one scale")
def concat_scales(index):
    for node in index.graph.node:
        if node.op_type != "Concat":
            continue
        scales = []
        for t in node.input:
            dq = dequantized_from(index, t)
            if dq is not None:
                s = qdq_facts(index, dq).scale
                if s is not None:
                    scales.append(float(np.ravel(s)[0]))
        if len(scales) > 1 and (max(scales) - min(scales)) > 1e-6 * max(scales):
            yield (node_id(node), f"quantized inputs have different scales ({min(scales):.3g}..{max(scales):.3g}); "
                                  "TensorRT requantizes instead of removing the DQ/Q around Concat")


@rule("TRT-17", targets=("tensorrt",), severity="warning", summary="no Q/DQ between Conv and its BN/ReLU")
def nothing_after_conv(index):
    for node in index.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        producer = index.producer.get(node.input[0])
        if producer is None or producer.op_type not in ("Conv", "ConvTranspose"):
            continue
        for dq in index.consumers.get(node.output[0], []):
            for consumer in index.consumers.get(dq.output[0], []) if dq.op_type == "DequantizeLinear" else []:
                if consumer.op_type in ("BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid"):
                    yield (node_id(node), f"Q/DQ between {producer.op_type} {node_id(producer)} and "
                                          f"{consumer.op_type} {node_id(consumer)} blocks their fusion")


@rule("TRT-18", targets=("tensorrt",), severity="warning", summary="no Q/DQ between Pad and Conv")
def nothing_after_pad(index):
    for node in index.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        dq = dequantized_from(index, node.input[0])
        source = quantize_source(index, dq) if dq is not None else None
        producer = index.producer.get(source) if source else None
        if producer is not None and producer.op_type == "Pad":
            yield (node_id(node), f"Q/DQ between Pad {node_id(producer)} and the Conv blocks Pad+Conv fusion; "
                                  "quantize the Pad input instead")


@rule("TRT-21", targets=("tensorrt",), severity="warning", summary="Softmax/LayerNorm/GELU stay float")
def float_sensitive_ops(index):
    for node in index.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Gelu", "Erf"):
            if any(dequantized_from(index, t) is not None for t in node.input[:1]):
                yield (node_id(node), f"{node.op_type} reads a dequantized input; keep it float unless using FP8 MHA")
