"""TensorRT 2:4 structured sparsity: which weights already have the pattern, which could.

TensorRT's sparse kernels (Ampere and later, built with --sparsity=enable) take a Conv,
Gemm or MatMul whose constant weight has at most 2 non-zeros in every 4 consecutive
elements along the reduction axis (rules file TRT-25). Weights are followed back through
Transpose/Identity/Cast and DequantizeLinear (an INT8 zero is a float zero when the zero
point is 0), so a QDQ model is checked on its integer weights.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.op_facts import AXIS_KEEPING_OPS, WEIGHT_INPUTS, reduction_axis, through_transpose
from onnxcomp.passes.sparsify.nm import satisfies_nm
from onnxcomp.pipeline.rules import rule

SPARSE_KERNEL_OPS = ("Conv", "Gemm", "MatMul")  # TensorRT has 2:4 kernels for these (not ConvTranspose)
_AXIS_NAMES = {"Conv": "input channels"}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _trace(index, name: str):
    """(initializer name, [Transpose perms from the consumer back]) behind `name`, or None."""
    perms = []
    while name not in index.initializers:
        node = index.producer.get(name)
        if node is None or len(perms) > 16:
            return None
        if node.op_type == "Transpose":
            perms.append(_attrs(node).get("perm"))
        elif node.op_type not in AXIS_KEEPING_OPS + ("DequantizeLinear",):
            return None
        name = node.input[0]
    return name, perms


def weight_uses(index):
    """(node label, op, initializer name, reduction axis) for every constant weight of a weighted op."""
    for node in index.graph.node:
        if node.op_type not in SPARSE_KERNEL_OPS:
            continue
        attrs = _attrs(node)
        for slot in WEIGHT_INPUTS[node.op_type]:
            if slot >= len(node.input):
                continue
            traced = _trace(index, node.input[slot])
            if traced is None:
                continue
            name, perms = traced
            rank = len(index.initializers[name].dims)
            axis = reduction_axis(node.op_type, slot, attrs, rank)
            if axis is None or any(p is not None and len(p) != rank for p in perms):
                continue
            for perm in perms:
                axis = through_transpose(axis, perm, rank)
            yield node.name or node.output[0], node.op_type, name, axis


def _survey(index):
    """(label, op, weight, axis, axis length, is 2:4) per weight use; computed once per model for
    the three SPARSE rules."""
    if "sparse-survey" not in index.cache:
        index.cache["sparse-survey"] = _scan(index)
    return index.cache["sparse-survey"]


def _scan(index):
    rows = []
    for label, op, name, axis in weight_uses(index):
        dims = list(index.initializers[name].dims)
        if np.prod(dims) < 4:
            continue
        length = dims[axis]
        values = index.constant(name)
        sparse = length % 4 == 0 and satisfies_nm(values, axis, 2, 4)
        rows.append((label, op, name, axis, length, sparse))
    return rows


@rule("SPARSE-01", targets=("tensorrt",), severity="info",
      summary="weights with the 2:4 pattern TensorRT's sparse kernels take")
def sparse_weights(index):
    for label, op, name, axis, length, sparse in _survey(index):
        if sparse:
            what = _AXIS_NAMES.get(op, "reduction axis")
            yield (label, f"{name} is 2:4 sparse along axis {axis} ({what}, {length}): sparse tactics possible "
                          "with --sparsity=enable on Ampere or later")


@rule("SPARSE-02", targets=("tensorrt",), severity="warning",
      summary="in a partly 2:4 model, eligible weights that break the pattern")
def broken_pattern(index):
    rows = _survey(index)
    eligible = [r for r in rows if r[4] % 4 == 0]
    sparse = [r for r in eligible if r[5]]
    if not sparse:
        if eligible:
            yield ("model", f"none of {len(eligible)} eligible weights is 2:4 sparse; "
                            "`onnxcomp optimize --sparsify 2:4` makes them so", "info")
        return
    for label, op, name, axis, length, ok in eligible:
        if not ok:
            yield (label, f"{name} is not 2:4 along axis {axis} although {len(sparse)} other weight(s) are: "
                          "TensorRT runs this layer dense")


@rule("SPARSE-03", targets=("tensorrt",), severity="info",
      summary="weights whose reduction axis is not a multiple of 4 (cannot be 2:4)")
def ineligible(index):
    rows = _survey(index)
    if not any(r[5] for r in rows):
        return
    for label, op, name, axis, length, _ok in rows:
        if length % 4:
            yield (label, f"{name}: reduction axis {axis} has length {length}, not a multiple of 4; stays dense")
