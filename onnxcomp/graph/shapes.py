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
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
    except Exception:
        inferred = sk
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes
