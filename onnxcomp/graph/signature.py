"""A model's graph inputs as specs (name, dtype, shape) and dim overrides from the command line."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxcomp.errors import InputError

NP_TYPES = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    # ints are fixed sizes; strings are symbolic dims (dim_param) or "?" when unnamed.
    shape: tuple


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = NP_TYPES.get(tensor.elem_type)
        if dtype is None:
            raise InputError(f"input {value.name!r}: element type {tensor.elem_type} is not supported for data generation")
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in tensor.shape.dim)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


def resolve_shape(spec: InputSpec, dims: dict[str, int], batch: int | None = None) -> tuple[int, ...]:
    """Concrete shape: symbolic dims from `dims` (by dim name or `input:axis`), else 1 (or batch on axis 0)."""
    shape = []
    for axis, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
            continue
        key_axis = f"{spec.name}:{axis}"
        if key_axis in dims:
            shape.append(int(dims[key_axis]))
        elif isinstance(d, str) and d in dims:
            shape.append(int(dims[d]))
        elif axis == 0 and batch is not None:
            shape.append(batch)
        else:
            shape.append(1)
    return tuple(shape)


def parse_dims(items) -> dict[str, int]:
    """`batch=8`, `input:0=8` → {name: size}."""
    dims = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq:
            raise InputError(f"--dim {item!r}: expected NAME=SIZE (a dim name, or INPUT:AXIS)")
        try:
            size = int(value)
        except ValueError:
            raise InputError(f"--dim {item!r}: size must be an integer") from None
        if size <= 0:
            raise InputError(f"--dim {item!r}: size must be positive")
        dims[key.strip()] = size
    return dims
