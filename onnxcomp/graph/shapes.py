"""Static shape inference on a weight-free skeleton of the model."""

from __future__ import annotations

import onnx


def skeleton(model: onnx.ModelProto, keep_bytes: int = 4096) -> onnx.ModelProto:
    """A copy without the data of large initializers: enough for shape inference, no weight copy."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    g = out.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.ByteSize() > keep_bytes:
            stub = g.initializer.add()
            stub.name, stub.data_type = init.name, init.data_type
            stub.dims.extend(init.dims)
        else:
            g.initializer.add().CopyFrom(init)
    return out


def infer_shapes(model: onnx.ModelProto, dims: dict[str, int] | None = None) -> dict[str, tuple]:
    """Static shapes of every value, with symbolic input dims fixed (default 1 = per sample)."""
    from onnxcomp.graph.signature import input_specs, resolve_shape

    sk = skeleton(model)
    fixed = {s.name: resolve_shape(s, dims or {}) for s in input_specs(model)}
    for value in sk.graph.input:
        if value.name in fixed:
            for d, size in zip(value.type.tensor_type.shape.dim, fixed[value.name]):
                d.Clear()
                d.dim_value = size
    found = value_shapes(sk, data_prop=True)
    if found is None:
        found = _declared(sk)
    shapes = {name: tuple(d if isinstance(d, int) else None for d in dims) for name, dims in found.items()}
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def value_shapes(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, list] | None:
    """What ONNX shape inference finds for every value of `model` (give it a skeleton: weights are
    not needed): dims as ints, symbolic names or None; None when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=data_prop)
    except Exception:
        return None
    return _declared(inferred)


def _declared(model: onnx.ModelProto) -> dict[str, list]:
    shapes = {}
    for value in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                                  for d in t.shape.dim]
    return shapes
