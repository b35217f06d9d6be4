"""`--make-static`: write the sizes a run fixed (`--input-shapes`, `--dim`) into the model itself.

The inputs get concrete dims before the passes run (so they see, and may fold, static shapes);
after them, outputs and intermediate values get the static dims ONNX shape inference finds.
"""

from __future__ import annotations

import onnx

from onnxcomp.errors import InputError
from onnxcomp.graph.shapes import skeleton, value_shapes
from onnxcomp.graph.signature import InputSpec


def static_shapes(specs: list[InputSpec], dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every input's concrete shape: static dims, else `dims` by INPUT:AXIS or dim name; one
    InputError line for a dynamic dim nothing sizes."""
    shapes = {}
    for spec in specs:
        shape = []
        for axis, d in enumerate(spec.shape):
            size = spec.static(axis) or dims.get(f"{spec.name}:{axis}") or (dims.get(d) if isinstance(d, str) else None)
            if size is None:
                label = f" ({d!r})" if isinstance(d, str) and d != "?" else ""
                raise InputError(f"--make-static: input {spec.name!r} dim {axis}{label} has no size; give "
                                 f"--input-shapes {spec.name}:D1,D2,..." + (f" or --dim {d}=N" if label else ""))
            shape.append(int(size))
        shapes[spec.name] = tuple(shape)
    return shapes


def set_input_shapes(graph, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give the onnx-graphsurgeon graph's inputs these shapes."""
    for value in graph.inputs:
        if value.name in shapes:
            value.shape = list(shapes[value.name])


def write_static_shapes(model: onnx.ModelProto) -> int:
    """Fill the dynamic dims of the model's outputs and value_info with what shape inference finds
    from its (now static) inputs, in place; returns how many dims were filled."""
    sk = skeleton(model)
    del sk.graph.value_info[:]  # symbolic dims from before would only be merged back in
    found = value_shapes(sk, data_prop=True)
    if found is None:
        return 0
    filled = 0
    for value in list(model.graph.output) + list(model.graph.value_info):
        inferred = found.get(value.name)
        tensor = value.type.tensor_type
        if inferred is None or not value.type.HasField("tensor_type"):
            continue
        if not tensor.HasField("shape"):
            if all(isinstance(d, int) for d in inferred):
                tensor.shape.SetInParent()
                for d in inferred:
                    tensor.shape.dim.add().dim_value = d
                filled += len(inferred)
            continue
        if len(tensor.shape.dim) != len(inferred):
            continue
        for dim, size in zip(tensor.shape.dim, inferred):
            if not dim.HasField("dim_value") and isinstance(size, int) and size > 0:
                dim.Clear()
                dim.dim_value = size
                filled += 1
    return filled
