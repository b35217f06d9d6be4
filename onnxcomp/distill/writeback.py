"""Trained values back into the same ONNX graph, and torch students out to ONNX.

Write-back replaces the data of the initializers the interpreter trained (weights, BatchNorm
running statistics) and nothing else: node list, names, shapes, dtypes and every other
initializer stay as they were, and a weight's zeros stay zeros (the trainer masks them; this
module checks it).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from onnxcomp.distill.onnx_to_torch import OnnxModule
from onnxcomp.errors import InputError, first_line
from onnxcomp.passes.qdq.numerics import per_axis, quantize_linear


def write_back(model: onnx.ModelProto, module: OnnxModule, keep_zeros: bool = True) -> onnx.ModelProto:
    """A copy of `model` whose trained initializers hold the module's current values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        kind, _ = module.key_of.get(init.name, ("const", None))
        if kind == "const":
            continue
        old = numpy_helper.to_array(init)
        value = module.initializer_tensor(init.name).detach().cpu().numpy()
        if kind == "qparam":  # back onto the weight's fixed integer grid
            scale_name, zp_name, axis, dtype = module.qspec[init.name]
            zp = module.consts.get(zp_name)
            new = quantize_linear(value, module.consts[scale_name].numpy(), None if zp is None else zp.numpy(), axis,
                                  dtype)
        else:
            new = value.astype(old.dtype).reshape(old.shape)
        if keep_zeros and old.ndim >= 2 and kind in ("param", "qparam"):
            zeros = old == (0 if kind == "param" else _zero_point(module, init.name, old))
            if zeros.any() and np.any(new[zeros] != old[zeros]):
                raise AssertionError(f"write-back: sparsity of {init.name!r} was not kept")
        init.CopyFrom(numpy_helper.from_array(new, init.name))
    return out


def export_student(module: torch.nn.Module, example: list[torch.Tensor], input_names: list[str],
                   output_names: list[str], dynamic_axes: dict, opset: int) -> onnx.ModelProto:
    """TorchScript export with constant folding off, so BatchNorm stays a node for fold-bn."""
    module.eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice: chosen on purpose
            torch.onnx.export(module, tuple(example), buffer, dynamo=False, do_constant_folding=False,
                              opset_version=opset, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes)
    except Exception as exc:
        raise InputError(f"exporting the student to ONNX failed: {type(exc).__name__}: "
                         f"{first_line(exc, fallback='')}") from None
    return onnx.load_model_from_string(buffer.getvalue())


def dynamic_axes_like(reference: onnx.ModelProto | None, input_names: list[str], output_names: list[str]) -> dict:
    """Symbolic dims of the reference (teacher) model's inputs/outputs; else the batch axis."""
    axes: dict = {}
    if reference is not None:
        values = {v.name: v for v in list(reference.graph.input) + list(reference.graph.output)}
        ref_out = [o.name for o in reference.graph.output]
        for name, ref_name in list(zip(input_names, input_names)) + list(zip(output_names, ref_out)):
            value = values.get(ref_name)
            if value is None:
                continue
            dims = {i: (d.dim_param or f"{name}_dim{i}") for i, d in enumerate(value.type.tensor_type.shape.dim)
                    if not d.HasField("dim_value")}
            if dims:
                axes[name] = dims
    for name in input_names + output_names:
        axes.setdefault(name, {0: "batch"})
    return axes


def _zero_point(module: OnnxModule, name: str, weight: np.ndarray):
    """The integer that encodes 0.0 in a quantized weight (per channel, broadcastable)."""
    _, zp_name, axis, _ = module.qspec[name]
    zp = module.consts.get(zp_name)
    return 0 if zp is None else per_axis(zp.numpy(), weight, axis)
