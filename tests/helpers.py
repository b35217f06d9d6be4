"""Builders for tiny ONNX models and an ONNX Runtime equality check used across tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def make_model(nodes, inputs, outputs, initializers=(), opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "test", list(inputs), list(outputs),
                              [numpy_helper.from_array(np.asarray(v), name) for name, v in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    _fill_output_shapes(model)
    onnx.checker.check_model(model)
    return model


def _fill_output_shapes(model: onnx.ModelProto) -> None:
    """Outputs declared with shape None get the inferred type (the checker wants a shape field)."""
    if all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and out.name in known:
            out.type.CopyFrom(known[out.name].type)


def tensor(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def run(model: onnx.ModelProto, feeds: dict) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def random_feeds(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict:
    from onnxcomp.measure.runtime import random_inputs

    return random_inputs(model, seed=seed, batch=batch)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, atol: float = 1e-5, rtol: float = 1e-5,
                        seeds=(0, 1, 2)) -> None:
    for seed in seeds:
        feeds = random_feeds(a, seed)
        ra, rb = run(a, feeds), run(b, feeds)
        assert ra.keys() == rb.keys()
        for name in ra:
            np.testing.assert_allclose(rb[name], ra[name], atol=atol, rtol=rtol, err_msg=name)


def rng_array(shape, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def run_pass(model: onnx.ModelProto, pipeline: str, **ctx):
    """Run pipeline text on a copy of `model`; returns (new model, records)."""
    import onnxcomp
    from onnxcomp.graph.convert import to_graph, to_model

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
    records = onnxcomp.PassManager(onnxcomp.parse_pipeline(pipeline), verify="checker",
                                   ctx=onnxcomp.PassContext(**ctx)).run(graph)
    return to_model(graph), records
