"""`onnxcomp check --target tensorrt|ort`: each rule fires on a model that breaks it, and stays quiet otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, tensor
from onnx import TensorProto, helper, numpy_helper

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


def qoperator_conv():
    """A QLinearConv (the QOperator format TensorRT does not take)."""
    nodes = [helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv")]
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4], TensorProto.UINT8)],
                      [tensor("y", ["n", 2, 4, 4], TensorProto.UINT8)],
                      {"s": np.asarray(0.1, np.float32), "z": np.asarray(np.uint8(0)),
                       "w": np.ones((2, 3, 1, 1), np.uint8)})


def dynamic_scale_qdq():
    """A Q/DQ pair whose scale is computed at run time (ReduceMax), not a constant."""
    nodes = [helper.make_node("ReduceMax", ["x"], ["s"], name="dyn_scale", keepdims=0),
             helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")]
    return make_model(nodes, [tensor("x", [4])], [tensor("y", [4])], {"z": np.asarray(np.int8(0))})


def pad_qdq_conv():
    """Pad -> Q -> DQ -> Conv."""
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "s": np.asarray(0.1, np.float32),
             "z": np.asarray(np.int8(0)), "w": np.ones((2, 3, 1, 1), np.int8), "ws": np.full(2, 0.1, np.float32),
             "wz": np.zeros(2, np.int8)}
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"], name="q"),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["pd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dqw", axis=0),
             helper.make_node("Conv", ["pd", "wd"], ["y"], name="conv")]
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits)


def residual_and_concat():
    """A Conv branch and a skip branch, both quantized with different scales, meeting in Add and Concat."""
    inits = {"s": np.asarray(0.1, np.float32), "s2": np.asarray(0.2, np.float32), "z": np.asarray(np.int8(0)),
             "w": rng_array((3, 3, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="qc"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["cd"], name="dqc"),
             helper.make_node("QuantizeLinear", ["x", "s2", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s2", "z"], ["xd"], name="dqx"),
             helper.make_node("Add", ["cd", "xd"], ["a"], name="add"),
             helper.make_node("Concat", ["cd", "xd"], ["y"], name="concat", axis=1)]
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("a", None), tensor("y", None)], inits)


def per_axis_at_opset_12():
    old = qdq_conv()
    old.opset_import[0].version = 12  # per-axis DQ at opset 12 (the ONNX checker would refuse to build it)
    return old


def test_tensorrt_rejects_qoperator_ops_and_dynamic_scales():
    assert "TRT-01" in rules(qoperator_conv())
    assert "TRT-06" in rules(dynamic_scale_qdq())


def test_tensorrt_fusion_warnings():
    assert "TRT-14" in rules(qdq_conv(bias_int32=True), severity="warning")
    assert "TRT-17" in rules(qdq_conv(relu_after_q=True), severity="warning")
    assert "TRT-18" in rules(pad_qdq_conv(), severity="warning")


def test_tensorrt_residual_and_concat_warnings():
    warnings = rules(residual_and_concat(), severity="warning")
    assert {"TRT-15", "TRT-16"} <= warnings


def test_ort_rules():
    # symmetric INT8 activations: ORT runs them slowly; a Conv without an output Q is not fused; float bias
    model = qdq_conv()
    warnings = rules(model, "ort", "warning")
    assert {"ORT-04", "ORT-05"} <= warnings
    assert rules(model, "ort") == set()
    assert "ORT-01" in rules(per_axis_at_opset_12(), "ort")
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


# ---------- one model per rule: GEN-, ORT-03/06/07, SPARSE-, TRT-11/21 ----------

def plain_model(opset_imports, domain=""):
    """x -> Relu (in `domain`) -> y, built without the helper's checker (some cases are not valid ONNX)."""
    node = helper.make_node("Relu", ["x"], ["y"], name="relu", domain=domain)
    graph = helper.make_graph([node], "g", [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opset_imports])
    model.ir_version = 8
    return model


def mismatched_qdq_pair():
    """Q emits UINT8 (zero point 128) but its DQ declares an INT8 zero point."""
    inits = {"s": np.asarray(0.1, np.float32), "zq": np.asarray(np.uint8(128)), "zd": np.asarray(np.int8(0))}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zq"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zd"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "g", [tensor("x", [4])], [tensor("y", [4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def with_bn_after_conv(model):
    """Append BatchNormalization after qdq_conv's Conv (the graph output moves to the BN)."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.output[0] = "c"
    for name, value in (("g", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
        model.graph.initializer.append(numpy_helper.from_array(np.full(4, value, np.float32), f"bn_{name}"))
    model.graph.node.append(helper.make_node("BatchNormalization", ["c", "bn_g", "bn_b", "bn_m", "bn_v"], ["y"],
                                             name="bn"))
    onnx.checker.check_model(model)
    return model


def with_float_bias(model):
    """Give qdq_conv's Conv a float bias initializer (not behind a DQ)."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(4, np.float32), "bias"))
    conv.input.append("bias")
    onnx.checker.check_model(model)
    return model


def conv_with_float_weight(through_maxpool=False, weight_dq=False):
    """Q -> DQ (-> MaxPool) -> Conv whose weight is float, or also quantized with weight_dq."""
    inits = {"s": np.asarray(0.1, np.float32), "z": np.asarray(np.int8(0))}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x")]
    data = "xd"
    if through_maxpool:  # TensorRT moves DQ across MaxPool: the Conv still counts as fed by a DQ
        nodes.append(helper.make_node("MaxPool", ["xd"], ["xp"], name="pool", kernel_shape=[1, 1]))
        data = "xp"
    if weight_dq:
        inits.update({"w_q": np.ones((4, 3, 1, 1), np.int8), "w_s": np.full(4, 0.05, np.float32),
                      "w_z": np.zeros(4, np.int8)})
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq_w", axis=0))
    else:
        inits["w"] = rng_array((4, 3, 1, 1))
    nodes.append(helper.make_node("Conv", [data, "w"], ["y"], name="conv"))
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits)


def qdq_then(op_type, quantized=True, **attrs):
    """x (-> Q -> DQ) -> op_type -> y."""
    inits = {"s": np.asarray(0.1, np.float32), "z": np.asarray(np.int8(0))} if quantized else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_x")] if quantized else []
    nodes.append(helper.make_node(op_type, ["xd" if quantized else "x"], ["y"], name=op_type.lower(), **attrs))
    return make_model(nodes, [tensor("x", [2, 8])], [tensor("y", [2, 8])], inits)


def two_four(out_ch, in_ch, seed=0):
    """A Conv weight with exactly two non-zeros in every four input channels."""
    w = rng_array((out_ch, in_ch, 1, 1), seed)
    w[:, 1::2] = 0.0
    return w


def conv_chain(weights):
    """x -> Conv(w0) -> Conv(w1) -> ... -> y, channel counts taken from the weights."""
    nodes, data = [], "x"
    for i in range(len(weights)):
        nodes.append(helper.make_node("Conv", [data, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        data = f"c{i}"
    nodes[-1].output[0] = "y"
    in_ch = weights[0].shape[1]
    return make_model(nodes, [tensor("x", ["n", in_ch, 4, 4])], [tensor("y", None)],
                      {f"w{i}": w for i, w in enumerate(weights)})


def partly_sparse():
    """conv0: 3 input channels (cannot be 2:4); conv1: 2:4 sparse; conv2: eligible (8 channels) but dense."""
    return conv_chain([rng_array((8, 3, 1, 1)), two_four(8, 8), rng_array((4, 8, 1, 1), 2)])


def test_gen_rules_opset_and_domains():
    assert findings(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])],
                               opset=9), "ort") >= {("GEN-01", "error")}
    no_default = [f for f in run_checks(plain_model([("my.ops", 1)], "my.ops"), "tensorrt") if f.rule == "GEN-01"]
    assert [(f.severity, f.node) for f in no_default] == [("error", "model")]
    custom = [f for f in run_checks(plain_model([("", 17), ("my.ops", 1)], "my.ops"), "ort") if f.rule == "GEN-02"]
    assert [(f.severity, f.node) for f in custom] == [("warning", "relu")] and "my.ops" in custom[0].message
    for target in ("ort", "tensorrt"):  # a current opset and known domains: neither fires
        for model in (plain_model([("", 17)]), plain_model([("", 17), ("com.microsoft", 1)], "com.microsoft")):
            assert not {r for r, _ in findings(model, target)} & {"GEN-01", "GEN-02"}
    assert "GEN-01" not in {r for r, _ in findings(plain_model([("", 10)]), "ort")}  # 10 is the oldest accepted


def test_ort_q_and_dq_types_must_agree():
    assert ("ORT-03", "error") in findings(mismatched_qdq_pair(), "ort")
    assert "ORT-03" not in rules(qdq_conv(x_zp=np.uint8(128)), "ort")


def test_ort_unfolded_bn_after_quantized_conv():
    assert ("ORT-06", "warning") in findings(with_bn_after_conv(qdq_conv()), "ort")
    float_conv = with_bn_after_conv(conv_chain([rng_array((4, 3, 1, 1))]))  # no QDQ: folding is not ORT-06's business
    assert "ORT-06" not in {r for r, _ in findings(float_conv, "ort")}


def test_ort_float_bias_of_a_quantized_conv():
    assert ("ORT-07", "warning") in findings(with_float_bias(qdq_conv()), "ort")
    assert "ORT-07" not in rules(qdq_conv(bias_int32=True), "ort", "warning")
    assert "ORT-07" not in rules(qdq_conv(), "ort", "warning")  # no bias at all


def test_tensorrt_half_quantized_weighted_op():
    hits = [f for f in run_checks(conv_with_float_weight(), "tensorrt") if f.rule == "TRT-11"]
    assert [(f.severity, f.node) for f in hits] == [("warning", "conv")] and "'w'" in hits[0].message
    assert ("TRT-11", "warning") in findings(conv_with_float_weight(through_maxpool=True))
    assert "TRT-11" not in {r for r, _ in findings(conv_with_float_weight(weight_dq=True))}
    assert "TRT-11" not in {r for r, _ in findings(conv_with_float_weight(through_maxpool=True, weight_dq=True))}


@pytest.mark.parametrize("op_type, attrs", [("Softmax", {"axis": -1}), ("Erf", {})])
def test_tensorrt_sensitive_ops_stay_float(op_type, attrs):
    assert ("TRT-21", "warning") in findings(qdq_then(op_type, **attrs))
    assert "TRT-21" not in {r for r, _ in findings(qdq_then(op_type, quantized=False, **attrs))}


def test_sparse_rules_in_a_partly_sparse_model():
    by_rule = {}
    for f in run_checks(partly_sparse(), "tensorrt"):
        by_rule.setdefault((f.rule, f.severity), []).append(f.node)
    assert by_rule[("SPARSE-01", "info")] == ["conv1"]
    assert by_rule[("SPARSE-02", "warning")] == ["conv2"]
    assert by_rule[("SPARSE-03", "info")] == ["conv0"]
    dense = {r for r, _ in findings(conv_chain([rng_array((8, 3, 1, 1)), rng_array((4, 8, 1, 1))]))}
    assert "SPARSE-03" not in dense and "SPARSE-01" not in dense  # nothing sparse: no per-weight notes


# ---------- every registered rule fires somewhere in this file ----------

# (rule, severity, target, model builder): one positive case per rule, the builders above.
POSITIVE = [
    ("GEN-01", "error", "ort", lambda: plain_model([("my.ops", 1)], "my.ops")),
    ("GEN-02", "warning", "tensorrt", lambda: plain_model([("", 17), ("my.ops", 1)], "my.ops")),
    ("ORT-01", "error", "ort", per_axis_at_opset_12),
    ("ORT-02", "error", "ort", lambda: qdq_conv(x_scale=np.float32(0.0))),
    ("ORT-03", "error", "ort", mismatched_qdq_pair),
    ("ORT-04", "warning", "ort", qdq_conv),
    ("ORT-05", "warning", "ort", qdq_conv),
    ("ORT-06", "warning", "ort", lambda: with_bn_after_conv(qdq_conv())),
    ("ORT-07", "warning", "ort", lambda: with_float_bias(qdq_conv())),
    ("SPARSE-01", "info", "tensorrt", partly_sparse),
    ("SPARSE-02", "warning", "tensorrt", partly_sparse),
    ("SPARSE-03", "info", "tensorrt", partly_sparse),
    ("TRT-01", "error", "tensorrt", qoperator_conv),
    ("TRT-02", "error", "tensorrt", lambda: qdq_conv(opset=12, w_scales=1)),
    ("TRT-03", "error", "tensorrt", lambda: qdq_conv(x_zp=np.uint8(128))),
    ("TRT-04", "error", "tensorrt", lambda: qdq_conv(x_zp=np.int8(3))),
    ("TRT-05", "error", "tensorrt", lambda: qdq_conv(with_zp=False)),
    ("TRT-06", "error", "tensorrt", dynamic_scale_qdq),
    ("TRT-07", "error", "tensorrt", lambda: qdq_conv(act_scales=3)),
    ("TRT-08", "error", "tensorrt", lambda: qdq_conv(w_axis=1, w_scales=3)),
    ("TRT-11", "warning", "tensorrt", conv_with_float_weight),
    ("TRT-14", "warning", "tensorrt", lambda: qdq_conv(bias_int32=True)),
    ("TRT-15", "warning", "tensorrt", residual_and_concat),
    ("TRT-16", "warning", "tensorrt", residual_and_concat),
    ("TRT-17", "warning", "tensorrt", lambda: qdq_conv(relu_after_q=True)),
    ("TRT-18", "warning", "tensorrt", pad_qdq_conv),
    ("TRT-21", "warning", "tensorrt", lambda: qdq_then("Softmax", axis=-1)),
]
# The parser-support rules (TRT-30..39) keep their cases with their tests.
from test_trt_support import POSITIVE_CASES  # noqa: E402

POSITIVE += POSITIVE_CASES


@pytest.mark.parametrize("rule_id, severity, target, build", POSITIVE, ids=[p[0] for p in POSITIVE])
def test_rule_fires_with_its_severity(rule_id, severity, target, build):
    assert (rule_id, severity) in findings(build(), target)


def test_every_registered_rule_fires_in_some_model_of_this_file():
    from onnxcomp.pipeline.rules import all_rules

    fired = set()
    for _rule, _severity, target, build in POSITIVE:
        fired |= {r for r, _ in findings(build(), target)}
    registered = all_rules()
    assert set(registered) - fired == set(), "rules no model here makes fire"
    assert {p[0] for p in POSITIVE} == set(registered)  # the table names each rule once, and only real ones
    assert all(registered[r].severity == s for r, s, _t, _b in POSITIVE)  # each case asserts the rule's own severity
