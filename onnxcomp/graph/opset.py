"""Opset and IR version of a model: conversion to the opset a pipeline needs, IR lowering for the runtime.

Deployed models are mostly opset 11/12 and the model zoo's are 7-9; the passes need newer
semantics (per-channel Q/DQ is opset 13). onnx's version converter does the rewrite; this module
turns its failures into one line with the converter's reason and keeps the IR version consistent
with the opset, so the result loads wherever the original did.
"""

from __future__ import annotations

import onnx
from onnx import helper

from onnxcomp.errors import InputError, first_line

DEFAULT_DOMAINS = ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) operator set, None when the model declares none."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    return versions[0] if versions else None


def ir_for_opset(opset: int) -> int:
    """The lowest IR version of an ONNX release that defines `opset` (onnx's own release table)."""
    candidates = [ir for _release, ir, ai_onnx, *_rest in helper.VERSION_TABLE if ai_onnx >= opset]
    return min(candidates) if candidates else onnx.IR_VERSION


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """A copy of `model` at default opset `target` (upwards only), or InputError with the converter's reason.

    The IR version is raised to what the new opset requires and otherwise kept, so a converted
    model is never newer than it must be.
    """
    current = default_opset(model)
    if current is None or current >= target:
        return model
    from onnx import version_converter

    unknown = sorted({n.op_type for n in model.graph.node
                      if n.domain in DEFAULT_DOMAINS and not onnx.defs.has(n.op_type)})
    if unknown:
        raise InputError(f"cannot convert opset {current} -> {target}: operator(s) {', '.join(unknown[:5])} "
                         "are not ONNX operators")
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:
        raise InputError(f"cannot convert opset {current} -> {target}: "
                         f"{first_line(exc, 'onnx version converter failed')}") from None
    converted.ir_version = max(model.ir_version, ir_for_opset(target))
    _keep_initializer_inputs(model, converted)
    try:
        onnx.checker.check_model(converted, full_check=False)
    except Exception as exc:
        raise InputError(f"opset {current} -> {target}: the converted model fails the ONNX checker "
                         f"({first_line(exc)})") from None
    return converted


def _keep_initializer_inputs(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """IR 3 models list initializers as graph inputs too; the converter keeps them, but make sure
    every listed input still exists so an IR 3 interface stays as it was."""
    names = {i.name for i in converted.graph.input}
    for value in original.graph.input:
        if value.name not in names:
            converted.graph.input.append(value)


def lower_ir_version(model: onnx.ModelProto, max_ir: int) -> int | None:
    """Lower the IR version to `max_ir` when the model's opsets allow it (their release's IR <= max_ir).

    Returns the old version when it changed, None when nothing had to change; raises InputError
    naming both versions when the model needs an IR version newer than `max_ir`.
    """
    if model.ir_version <= max_ir:
        return None
    opset = default_opset(model) or 1
    needed = ir_for_opset(opset)
    if needed > max_ir:
        raise InputError(f"the model uses opset {opset} (IR version {needed}); the installed ONNX Runtime "
                         f"reads IR version {max_ir} at most: upgrade onnxruntime or convert the model")
    old = model.ir_version
    model.ir_version = max(needed, min(max_ir, old))
    return old
