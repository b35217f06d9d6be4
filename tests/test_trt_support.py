"""TensorRT's parser support table, applied without TensorRT (`check --target tensorrt --trt-version`):
each rule family fires on a model that breaks it and stays quiet on its twin that does not, per
release where the releases differ; the capability report cuts the graph where the parser would;
`optimize --target` refuses to write what the target rejects."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, tensor
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.checks import run_checks
from onnxcomp.checks.capability import capability
from onnxcomp.checks.tensorrt_table import RELEASES
from onnxcomp.errors import VerificationError


def trt(model, version=None, severity="error") -> set[str]:
    """TRT-3x rule ids with `severity` for `model` at `version` (default: the newest)."""
    return {f.rule for f in run_checks(model, "tensorrt", trt_version=version)
            if f.severity == severity and f.rule >= "TRT-30"}


def messages(model, rule_id, version=None) -> list[str]:
    return [f.message for f in run_checks(model, "tensorrt", trt_version=version) if f.rule == rule_id]


def one_op(op, inputs=("x",), x_shape=(2, 3, 8, 8), inits=None, opset=17, dtype=TensorProto.FLOAT, graph_inputs=None,
           outputs=("y",), **attrs):
    """x -> op -> outputs, a single node named n (extra inputs from `inits` or `graph_inputs`); output
    types come from ONNX shape inference, and the ONNX checker accepts the result."""
    node = helper.make_node(op, list(inputs), list(outputs), name="n", **attrs)
    ins = [tensor("x", list(x_shape), dtype)] + list(graph_inputs or [])
    graph = helper.make_graph([node], "one_op", ins, [helper.make_empty_tensor_value_info(o) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
    for out in model.graph.output:
        out.type.CopyFrom(inferred[out.name].type)
    onnx.checker.check_model(model)
    return model


# ---------- unsupported operator (TRT-31) ----------

def det_model():
    return one_op("Det", x_shape=(2, 3, 4, 4))


def test_an_operator_without_importer_is_an_error_in_every_release():
    for version in RELEASES:
        assert "TRT-31" in trt(det_model(), version)
        assert "TRT-31" not in trt(one_op("Relu"), version)
    assert any("no importer for Det" in m for m in messages(det_model(), "TRT-31"))


def test_importers_differ_per_release_and_the_message_names_the_one_that_has_it():
    hardmax = one_op("Hardmax", x_shape=(2, 5), axis=-1)
    assert "TRT-31" in trt(hardmax, "8.6") and "TRT-31" not in trt(hardmax, "10.0")
    assert any("imported by TensorRT 10.0, 10.15" in m for m in messages(hardmax, "TRT-31", "8.6"))


def test_custom_domain_ops_need_a_plugin_and_nested_nodes_are_checked():
    node = helper.make_node("MyOp", ["x"], ["y"], name="custom", domain="my.ops")
    graph = helper.make_graph([node], "g", [tensor("x", [2])], [tensor("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)])
    assert any("needs a plugin" in m for m in messages(model, "TRT-31"))
    then = helper.make_graph([helper.make_node("Det", ["m"], ["t"], name="det")], "then", [], [tensor("t", None)])
    other = helper.make_graph([helper.make_node("Identity", ["v"], ["e"], name="id")], "else", [], [tensor("e", None)])
    cond = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)
    nested = make_model([cond], [tensor("c", [], TensorProto.BOOL)], [tensor("y", None)],
                        {"m": np.eye(2, dtype=np.float32)[None], "v": np.ones(1, np.float32)})
    found = [f for f in run_checks(nested, "tensorrt") if f.rule == "TRT-31"]
    assert [f.node for f in found] == ["branch"] and "Det det in its body" in found[0].message


# ---------- attribute restriction (TRT-35) ----------

def resize(mode):
    return one_op("Resize", inputs=("x", "", "scales"), inits={"scales": np.array([1, 1, 2, 2], np.float32)},
                  mode=mode)


def test_resize_modes():
    for version in RELEASES:
        assert "TRT-35" in trt(resize("cubic"), version)
        assert "TRT-35" not in trt(resize("linear"), version)
    assert any("mode='cubic'" in m for m in messages(resize("cubic"), "TRT-35"))


def recurrent(acts):
    hidden = 4
    inits = {"W": rng_array((2, 4 * hidden, 3)), "R": rng_array((2, 4 * hidden, hidden), 1)}
    return one_op("LSTM", inputs=("x", "W", "R"), x_shape=(5, 2, 3), inits=inits, direction="bidirectional",
                  hidden_size=hidden, activations=acts)


def test_bidirectional_recurrent_ops_share_activations():
    assert "TRT-35" in trt(recurrent(["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"]))
    assert "TRT-35" not in trt(recurrent(["Sigmoid", "Tanh", "Tanh"] * 2))


def test_topk_sorted_and_its_k_bound_only_in_the_newest_release():
    unsorted = one_op("TopK", inputs=("x", "k"), x_shape=(2, 8), inits={"k": np.array([3], np.int64)},
                      outputs=("v", "i"), sorted=0)
    assert "TRT-35" in trt(unsorted, "10.15") and "TRT-35" not in trt(unsorted, "10.0")
    big_k = one_op("TopK", inputs=("x", "k"), x_shape=(2, 5000), inits={"k": np.array([4000], np.int64)},
                   outputs=("v", "i"))
    assert any("below 3840" in m for m in messages(big_k, "TRT-35", "10.15"))
    assert "TRT-35" not in trt(one_op("TopK", inputs=("x", "k"), x_shape=(2, 8), inits={"k": np.array([3], np.int64)},
                                      outputs=("v", "i")))


def test_pooling_ranks_dilations_and_indices():
    pool4d = one_op("MaxPool", x_shape=(1, 1, 4, 4, 4, 4), kernel_shape=[2, 2, 2, 2])
    assert "TRT-36" in trt(pool4d)
    assert "TRT-36" not in trt(one_op("MaxPool", x_shape=(1, 3, 8), kernel_shape=[2]))  # 1-D is unsqueezed to 2-D
    dilated = one_op("MaxPool", kernel_shape=[2, 2], dilations=[2, 2])
    assert "TRT-35" in trt(dilated, "10.0") and "TRT-35" not in trt(dilated, "8.6")
    indices = one_op("MaxPool", kernel_shape=[2, 2], outputs=("y", "idx"))
    assert "TRT-37" in trt(indices) and "TRT-37" not in trt(one_op("MaxPool", kernel_shape=[2, 2]))


# ---------- element types (TRT-32, TRT-33, TRT-38) ----------

def cast_then_transpose(to):
    nodes = [helper.make_node("Cast", ["x"], ["c"], name="cast", to=to),
             helper.make_node("Transpose", ["c"], ["t"], name="transpose", perm=[1, 0]),
             helper.make_node("Cast", ["t"], ["y"], name="back", to=TensorProto.FLOAT)]
    return make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [3, 2])])


def test_element_types():
    for version in RELEASES:  # UINT8 exists only at the network's edges
        assert any("UINT8" in m for m in messages(cast_then_transpose(TensorProto.UINT8), "TRT-32", version))
        assert "TRT-32" not in trt(cast_then_transpose(TensorProto.INT32), version)
    strings = cast_then_transpose(TensorProto.UINT16)
    assert any("a type TensorRT 10.15 lacks" in m for m in messages(strings, "TRT-32"))


def test_a_type_the_matrix_does_not_list_is_a_warning():
    fill = one_op("ConstantOfShape", inputs=("shape",), x_shape=(2,), inits={"shape": np.array([2, 3], np.int64)},
                  value=helper.make_tensor("v", TensorProto.INT64, [1], [7]))
    fill.graph.input.pop(0)  # no `x`
    assert "TRT-32" in trt(fill, "10.0", "warning")     # 10.0's matrix says FP32 only
    assert "TRT-32" not in trt(fill, "10.15", "warning")  # 10.15's lists INT64


def test_int64_and_double_are_cast_down_with_clamps_where_the_release_casts():
    ends = {"starts": np.array([1], np.int64), "ends": np.array([np.iinfo(np.int64).max], np.int64)}
    sliced = one_op("Slice", inputs=("x", "starts", "ends"), x_shape=(6,), inits=ends)
    assert any("clamped" in m for m in messages(sliced, "TRT-33", "8.6"))  # 8.6 narrows INT64 to INT32
    assert not messages(sliced, "TRT-33", "10.0")                           # 10.x has INT64
    double = one_op("Cast", x_shape=(3,), to=TensorProto.DOUBLE)
    assert "TRT-33" in trt(double, "10.15", "warning")
    assert "TRT-33" not in trt(one_op("Cast", x_shape=(3,), to=TensorProto.FLOAT16), "10.15", "warning")


def test_quantized_types_never_at_the_network_edge_from_10():
    int8_in = one_op("Cast", x_shape=(3,), dtype=TensorProto.INT8, to=TensorProto.FLOAT)
    assert "TRT-38" in trt(int8_in, "10.0") and "TRT-38" not in trt(int8_in, "8.6")
    assert "TRT-38" not in trt(one_op("Cast", x_shape=(3,), dtype=TensorProto.UINT8, to=TensorProto.FLOAT), "10.0")


# ---------- opset range per release (TRT-30) ----------

@pytest.mark.parametrize("opset, rejected_by", [(17, set()), (18, {"8.6"}), (21, {"8.6", "10.0"}),
                                                (25, {"8.6", "10.0", "10.15"})])
def test_opset_range_per_release(opset, rejected_by):
    model = one_op("Relu", opset=opset)
    assert {v for v in RELEASES if "TRT-30" in trt(model, v)} == rejected_by
    if opset == 21:  # INT4 Q/DQ needs opset 21: the finding says which release reads it
        assert any("TensorRT 10.15 reads it" in m for m in messages(model, "TRT-30", "10.0"))
    if opset == 25:
        assert any("no TensorRT release in the table reads it" in m for m in messages(model, "TRT-30"))


def test_an_old_opset_is_a_warning_not_an_error():
    model = one_op("Relu", opset=8)
    assert "TRT-30" in trt(model, "10.0", "warning") and "TRT-30" not in trt(model, "10.0")


# ---------- constant-input requirement (TRT-34) ----------

def slice_axes(axes_from_input: bool):
    inits = {"starts": np.array([1], np.int64), "ends": np.array([3], np.int64)}
    extra = [tensor("axes", [1], TensorProto.INT64)] if axes_from_input else []
    if not axes_from_input:
        inits["axes"] = np.array([1], np.int64)
    return one_op("Slice", inputs=("x", "starts", "ends", "axes"), x_shape=(2, 6), inits=inits, graph_inputs=extra)


def test_constant_inputs_per_release():
    runtime_axes = slice_axes(True)
    assert "TRT-34" in trt(runtime_axes, "8.6") and "TRT-34" in trt(runtime_axes, "10.0")
    assert "TRT-34" not in trt(runtime_axes, "10.15")  # tensor axes for Slice from 10.3
    assert "TRT-34" not in trt(slice_axes(False), "8.6")
    assert any("axes (input 3) of Slice is computed at run time" in m for m in messages(runtime_axes, "TRT-34", "8.6"))


def test_values_folded_from_constants_count_as_constant_and_shapes_only_warn():
    one = helper.make_tensor("v", TensorProto.INT64, [1], [1])
    axes = [helper.make_node("Constant", [], ["one"], name="c", value=one),
            helper.make_node("Add", ["one", "zero"], ["ax"], name="fold")]
    folded = make_model(axes + [helper.make_node("Squeeze", ["x", "ax"], ["y"], name="sq")],
                        [tensor("x", [2, 1, 3])], [tensor("y", [2, 3])], {"zero": np.array([0], np.int64)})
    assert "TRT-34" not in trt(folded, "8.6", "error") and "TRT-34" not in trt(folded, "8.6", "warning")
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", start=1, end=2),
             helper.make_node("Sub", ["s", "one"], ["ax"], name="minus"),
             helper.make_node("Squeeze", ["x", "ax"], ["y"], name="sq")]
    from_shape = make_model(nodes, [tensor("x", ["n", "k", 3])], [tensor("y", ["a", "b"])],
                            {"one": np.array([1], np.int64)})
    assert "TRT-34" in trt(from_shape, "8.6", "warning") and "TRT-34" not in trt(from_shape, "8.6")


# ---------- capability: the graph cut where the parser would ----------

def conv_det_add():
    """Conv -> Relu -> Det (no importer) -> Add -> Mul: TensorRT, fallback, TensorRT."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Det", ["r"], ["d"], name="det"),
             helper.make_node("Add", ["d", "b"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "b"], ["y"], name="mul")]
    return make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)],
                      {"w": rng_array((3, 3, 1, 1)), "b": np.float32(0.5)})


def test_capability_partitions_around_the_unsupported_node():
    model = conv_det_add()
    cap = capability(model, run_checks(model, "tensorrt"))
    assert [(p.runtime, p.nodes) for p in cap.partitions] == [
        ("tensorrt", ["conv", "relu"]), ("fallback", ["det"]), ("tensorrt", ["add", "mul"])]
    assert cap.partitions[1].reasons[0]["rule"] == "TRT-31"
    summary = cap.as_dict()
    counts = (summary["nodes"], summary["tensorrt_nodes"], summary["fallback_nodes"], summary["parses"])
    assert counts == (5, 4, 1, True)
    assert "would take 4 of 5 nodes in 2 subgraph(s); 1 node(s)" in cap.text()
    whole = capability(one_op("Relu"), run_checks(one_op("Relu"), "tensorrt"))
    assert [p.runtime for p in whole.partitions] == ["tensorrt"]


def test_capability_leaves_data_dependent_shapes_out_from_10_and_stops_at_a_rejected_opset():
    nonzero = make_model([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                          helper.make_node("NonZero", ["r"], ["y"], name="nz")],
                         [tensor("x", [2, 3])], [tensor("y", None, TensorProto.INT64)])
    for version, runtimes in (("8.6", ["tensorrt"]), ("10.0", ["tensorrt", "fallback"])):
        cap = capability(nonzero, run_checks(nonzero, "tensorrt", trt_version=version), version)
        assert [p.runtime for p in cap.partitions] == runtimes
    new = one_op("Relu", opset=21)
    cap = capability(new, run_checks(new, "tensorrt", trt_version="10.0"), "10.0")
    assert not cap.as_dict()["parses"] and "TRT-30" in cap.model_errors[0]


# ---------- the command line ----------

def cli(*args):
    from onnxcomp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_check_cli_versions_capability_and_json_schema(tmp_path):
    from test_report_schema import DOC, read_schema, schema_problems

    path = tmp_path / "m.onnx"
    onnx.save(conv_det_add(), str(path))
    code, out, _ = cli("check", path, "--trt-version", "8.6", "--capability")
    assert code == 3 and "tensorrt 8.6: 1 error(s)" in out and "fallback" in out
    code, out, _ = cli("check", path, "--capability", "--json")
    report = json.loads(out)
    assert code == 3 and report["trt_version"] == "10.15" and len(report["capability"]["partitions"]) == 3
    assert schema_problems(report, read_schema(DOC.read_text())["check"]) == []
    code, _, err = cli("check", path, "--target", "ort", "--trt-version", "8.6")
    assert code == 2 and "--trt-version applies to --target tensorrt" in err
    code, out, _ = cli("check", path, "--rules")
    assert all(f"TRT-{n}" in out for n in range(30, 40))


def qdq_conv_for_ort():
    """x -> Q -> DQ -> Conv(DQ w) -> Q -> DQ: a group ORT's CPU provider fuses into QLinearConv."""
    inits = {"s": np.float32(0.05), "z": np.uint8(128), "w": np.ones((4, 3, 1, 1), np.int8),
             "ws": np.full(4, 0.02, np.float32), "wz": np.zeros(4, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="dqw", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="qc"),
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"], name="dqc")]
    return make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", None)], inits)


def test_ort_capability_comes_from_ort_s_own_session(tmp_path):
    from onnxcomp.checks.ort_coverage import ort_coverage

    quantized = ort_coverage(qdq_conv_for_ort())
    assert quantized["integer_nodes"] and not quantized["float_nodes"]
    assert any(op.startswith("QLinearConv") for op in quantized["ops"])
    plain = ort_coverage(conv_det_add())
    assert not plain["integer_nodes"] and plain["float_nodes"]
    path = tmp_path / "q.onnx"
    onnx.save(qdq_conv_for_ort(), str(path))
    code, out, _ = cli("check", path, "--target", "ort", "--capability", "--json")
    assert code == 0 and json.loads(out)["capability"]["integer_nodes"]


# ---------- optimize --target checks its output ----------

@pytest.fixture
def det_calib(tmp_path):
    model, data = tmp_path / "det.onnx", tmp_path / "calib.npz"
    onnx.save(conv_det_add(), str(model))
    np.savez(data, x=np.random.default_rng(0).standard_normal((16, 3, 4, 4)).astype(np.float32))
    return model, data


def test_optimize_target_refuses_what_tensorrt_rejects_unless_allowed(det_calib, tmp_path):
    from test_report_schema import DOC, read_schema, schema_problems

    model, data = det_calib
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    args = ["optimize", model, "-o", out, "-q", "--quantize", "int8", "--calib", data, "--target", "tensorrt"]
    code, _, err = cli(*args)
    assert code == 3 and "rejected by TensorRT 10.15" in err and "TRT-31 det" in err
    assert not out.exists()
    code, stdout, err = cli(*args, "--allow-incompatible", "--trt-version", "10.0", "--report", report)
    assert code == 0, err
    assert out.exists() and "target check (tensorrt 10.0): 1 error(s)" in stdout
    written = json.loads(report.read_text())
    check = written["target_check"]
    assert (check["compatible"], check["allowed_incompatible"], check["trt_version"]) == (False, True, "10.0")
    assert [f["rule"] for f in check["findings"] if f["severity"] == "error"] == ["TRT-31"]
    problems = schema_problems(written, read_schema(DOC.read_text())["optimize"], opaque={("passes", "[]")})
    assert [p for p in problems if p.startswith("target_check")] == []
    code, _, err = cli("optimize", model, "-o", out, "--allow-incompatible")
    assert code == 2 and "needs a target" in err


def test_our_tensorrt_output_passes_every_release(models_dir):
    """insert-qdq for tensorrt (with the opset conversion before it) emits nothing any release rejects."""
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    for name, calib in (("digits_cnn", "digits_calib"), ("mlp", "mlp_calib"), ("transformer_block", "transformer_calib")):
        model = load_model(models_dir / f"{name}.onnx")
        data = {k: v[:16] for k, v in load_data(models_dir / f"{calib}.npz", model).items()}
        for version in RELEASES:
            result = onnxcomp.optimize(model, None, "cleanup,fold-bn,insert-qdq{target=tensorrt}", data=data,
                                       check_target="tensorrt", trt_version=version, check_output=False)
            assert result.target_check["compatible"], (name, version, result.target_check["findings"])
            assert "QuantizeLinear" in {n.op_type for n in result.model.graph.node}
    with pytest.raises(VerificationError, match="rejected by TensorRT 10.15"):
        onnxcomp.optimize(conv_det_add(), None, "cleanup", check_target="tensorrt")


# ---------- the table itself ----------

def test_the_table_names_its_sources_and_is_consistent():
    for r in RELEASES.values():
        assert r.version in r.source and "onnx-tensorrt" in r.source
        assert r.opsets[0] < r.opsets[1]
        for op, types in r.ops.items():
            assert types is None or types <= r.types, (r.version, op)
        for op in r.limits:
            assert r.ops.get(op) is not None, (r.version, op)  # limits only on ops it imports
    assert RELEASES["10.0"].opsets == (9, 20)  # as the 10.0 matrix states
    from onnxcomp.errors import InputError

    with pytest.raises(InputError, match="known releases: 8.6, 10.0, 10.15"):
        run_checks(one_op("Relu"), "tensorrt", trt_version="9.9")


# (rule, severity, target, model builder) for test_check_rules' "every rule fires" table.
POSITIVE_CASES = [
    ("TRT-30", "error", "tensorrt", lambda: one_op("Relu", opset=25)),
    ("TRT-31", "error", "tensorrt", det_model),
    ("TRT-32", "error", "tensorrt", lambda: cast_then_transpose(TensorProto.UINT8)),
    ("TRT-33", "warning", "tensorrt", lambda: one_op("Cast", x_shape=(3,), to=TensorProto.DOUBLE)),
    ("TRT-34", "error", "tensorrt", lambda: one_op("CumSum", inputs=("x", "axis"), x_shape=(2, 3), graph_inputs=[
        tensor("axis", [], TensorProto.INT64)])),
    ("TRT-35", "error", "tensorrt", lambda: resize("cubic")),
    ("TRT-36", "error", "tensorrt", lambda: one_op("MaxPool", x_shape=(1, 1, 4, 4, 4, 4), kernel_shape=[2, 2, 2, 2])),
    ("TRT-37", "error", "tensorrt", lambda: one_op("MaxPool", kernel_shape=[2, 2], outputs=("y", "idx"))),
    ("TRT-38", "error", "tensorrt", lambda: one_op("Cast", x_shape=(3,), dtype=TensorProto.INT8, to=TensorProto.FLOAT)),
    ("TRT-39", "info", "tensorrt", lambda: one_op("RandomUniformLike", seed=3.0)),
]
