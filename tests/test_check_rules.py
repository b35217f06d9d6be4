"""`onnxcomp check --target tensorrt|ort`: each rule fires on a model that breaks it, and stays quiet otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_model, rng_array, tensor
from onnx import TensorProto, helper

from onnxcomp.checks import run_checks


def qdq_conv(x_zp=np.int8(0), w_zp=np.int8(0), x_scale=np.float32(0.1), opset=17, w_axis=0, w_scales=4,
             bias_int32=False, act_scales=1, with_zp=True, relu_after_q=False):
    """x -> Q -> DQ -> Conv(DQ(w int8)) -> y, with knobs that break one rule at a time."""
    inits = {"x_scale": np.full(act_scales, x_scale, np.float32) if act_scales > 1 else np.asarray(x_scale, np.float32),
             "w_q": np.ones((4, 3, 1, 1), np.int8), "w_scale": np.full(w_scales, 0.05, np.float32),
             "w_zp": np.full(w_scales, w_zp, type(w_zp))}
    if with_zp:
        inits["x_zp"] = np.full(act_scales, x_zp, type(x_zp)) if act_scales > 1 else np.asarray(x_zp)
    zp_in = ["x_zp"] if with_zp else []
    q_attrs = {"axis": 1} if act_scales > 1 else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", *zp_in], ["xq"], name="q_x", **q_attrs),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", *zp_in], ["xd"], name="dq_x", **q_attrs),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w",
                              **({"axis": w_axis} if w_scales > 1 else {}))]
    conv_inputs = ["xd", "wd"]
    if bias_int32:
        inits.update({"b_q": np.zeros(4, np.int32), "b_scale": np.full(4, 0.005, np.float32),
                      "b_zp": np.zeros(4, np.int32)})
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["bd"], name="dq_b", axis=0))
        conv_inputs.append("bd")
    out = "c" if relu_after_q else "y"
    nodes.append(helper.make_node("Conv", conv_inputs, [out], name="conv"))
    if relu_after_q:
        inits.update({"c_scale": np.asarray(0.1, np.float32), "c_zp": np.asarray(np.int8(0))})
        nodes += [helper.make_node("QuantizeLinear", ["c", "c_scale", "c_zp"], ["cq"], name="q_c"),
                  helper.make_node("DequantizeLinear", ["cq", "c_scale", "c_zp"], ["cd"], name="dq_c"),
                  helper.make_node("Relu", ["cd"], ["y"], name="relu")]
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits, opset=opset)


def findings(model, target="tensorrt"):
    return {(f.rule, f.severity) for f in run_checks(model, target)}


def rules(model, target="tensorrt", severity="error"):
    return {f.rule for f in run_checks(model, target) if f.severity == severity}


def test_clean_tensorrt_model_passes():
    assert rules(qdq_conv()) == set()
    assert rules(qdq_conv(), severity="warning") == set()


@pytest.mark.parametrize("kwargs, rule", [
    ({"x_zp": np.uint8(128)}, "TRT-03"),
    ({"x_zp": np.int8(3)}, "TRT-04"),
    ({"with_zp": False}, "TRT-05"),
    ({"act_scales": 3}, "TRT-07"),
    ({"w_axis": 1, "w_scales": 3}, "TRT-08"),
    ({"opset": 12, "w_scales": 1}, "TRT-02"),
    ({"x_scale": np.float32(-1.0)}, "TRT-06"),
])
def test_tensorrt_errors(kwargs, rule):
    assert rule in rules(qdq_conv(**kwargs))


def test_tensorrt_rejects_qoperator_ops_and_dynamic_scales():
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv")]
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4], TensorProto.UINT8)],
                       [tensor("y", ["n", 2, 4, 4], TensorProto.UINT8)],
                       {"s": np.asarray(0.1, np.float32), "z": np.asarray(np.uint8(0)),
                        "w": np.ones((2, 3, 1, 1), np.uint8)})
    assert "TRT-01" in rules(model)
    nodes = [helper.make_node("ReduceMax", ["x"], ["s"], name="dyn_scale", keepdims=0),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    model = make_model(nodes, [tensor("x", [4])], [tensor("y", [4])], {"z": np.asarray(np.int8(0))})
    assert "TRT-06" in rules(model)


def test_tensorrt_fusion_warnings():
    assert "TRT-14" in rules(qdq_conv(bias_int32=True), severity="warning")
    assert "TRT-17" in rules(qdq_conv(relu_after_q=True), severity="warning")
    # Pad -> Q -> DQ -> Conv
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "s": np.asarray(0.1, np.float32),
             "z": np.asarray(np.int8(0)), "w": np.ones((2, 3, 1, 1), np.int8), "ws": np.full(2, 0.1, np.float32),
             "wz": np.zeros(2, np.int8)}
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], name="q"),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["pd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dqw", axis=0),
             helper.make_node("Conv", ["pd", "wd"], ["y"], name="conv")]
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits)
    assert "TRT-18" in rules(model, severity="warning")


def test_tensorrt_residual_and_concat_warnings():
    inits = {"s": np.asarray(0.1, np.float32), "s2": np.asarray(0.2, np.float32), "z": np.asarray(np.int8(0)),
             "w": rng_array((3, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="qc"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dqc"),
             helper.make_node("QuantizeLinear", ["x", "s2", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s2", "z"], ["xd"], name="dqx"),
             helper.make_node("Add", ["cd", "xd"], ["a"], name="add"),
             helper.make_node("Concat", ["cd", "xd"], ["y"], name="concat", axis=1)]
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("a", None), tensor("y", None)], inits)
    warnings = rules(model, severity="warning")
    assert {"TRT-15", "TRT-16"} <= warnings


def test_ort_rules():
    # symmetric INT8 activations: ORT runs them slowly; a Conv without an output Q is not fused; float bias
    model = qdq_conv()
    warnings = rules(model, "ort", "warning")
    assert {"ORT-04", "ORT-05"} <= warnings
    assert rules(model, "ort") == set()
    old = qdq_conv()
    old.opset_import[0].version = 12  # per-axis DQ at opset 12 (the ONNX checker would refuse to build it)
    assert "ORT-01" in rules(old, "ort")
    assert "ORT-02" in rules(qdq_conv(x_scale=np.float32(0.0)), "ort")
    uint8 = qdq_conv(x_zp=np.uint8(128))
    assert "ORT-04" not in rules(uint8, "ort", "warning")


def test_finding_lines_name_node_rule_and_reason():
    lines = [f.line() for f in run_checks(qdq_conv(x_zp=np.uint8(7)), "tensorrt")]
    assert any("TRT-03" in line and "q_x" in line and "UINT8" in line for line in lines)


def test_check_reads_external_weights_from_the_model_folder(tmp_path):
    """`onnxcomp check` indexes the model without its weights; a rule reading a constant stored as
    external data must find it beside the model, whatever the working directory."""
    import os
    import subprocess
    import sys

    import onnx

    path = tmp_path / "model" / "q.onnx"
    path.parent.mkdir()
    onnx.save(qdq_conv(), str(path), save_as_external_data=True, location="q.onnx.data", size_threshold=0)
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "check", str(path), "--target", "tensorrt"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and "0 error(s)" in r.stdout, r.stdout + r.stderr
