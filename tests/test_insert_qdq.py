"""insert-qdq: placement per target, number formats, fidelity, bad input, --max-drop, golden placement."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, run, run_pass, tensor
from onnx import helper, numpy_helper

from onnxcomp.errors import InputError, ToleranceError

GOLDEN = Path(__file__).parent / "golden"


# ---------- tiny models ----------

def conv_relu_conv(channels=8):
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = {"w1": rng_array((channels, 3, 3, 3), 1, 0.3), "b1": rng_array((channels,), 2, 0.1),
             "w2": rng_array((4, channels, 3, 3), 3, 0.2), "b2": rng_array((4,), 4, 0.1)}
    return make_model(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", None)], inits)


def residual_block():
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y"], name="relu2")]
    inits = {"w1": rng_array((8, 3, 3, 3), 1, 0.3), "b1": rng_array((8,), 2, 0.1),
             "w2": rng_array((8, 8, 3, 3), 3, 0.2), "b2": rng_array((8,), 4, 0.1)}
    return make_model(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", None)], inits)


def calib(model, n=32, seed=0):
    from onnxcomp.measure.runtime import random_inputs

    return random_inputs(model, seed=seed, batch=n)


def quantize(model, options="", data=None, **ctx):
    data = calib(model) if data is None else data
    pipeline = "insert-qdq" + (f"{{{options}}}" if options else "")
    return run_pass(model, pipeline, data=data, **ctx)


def ops(model):
    return [n.op_type for n in model.graph.node]


def init(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def producer_map(model):
    return {o: n for n in model.graph.node for o in n.output}


def dq_inputs(model, node_name):
    """Which inputs of node `node_name` come from a DequantizeLinear."""
    prod = producer_map(model)
    node = next(n for n in model.graph.node if n.name == node_name)
    return [bool(i) and i in prod and prod[i].op_type == "DequantizeLinear" for i in node.input]


def cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def fused_ops(model):
    """Op types after ONNX Runtime's graph optimizations (shows which QDQ groups it fused)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return ops(onnx.load(opts.optimized_model_filepath))


# ---------- formats ----------

def test_activation_params_cover_range_and_keep_zero_exact():
    from onnxcomp.passes.qdq.numerics import (
        ORT_ACTIVATIONS,
        TENSORRT_ACTIVATIONS,
        activation_params,
        fake_quantize,
    )

    x = np.linspace(-1.5, 4.0, 1001).astype(np.float32)
    for fmt in (ORT_ACTIVATIONS, TENSORRT_ACTIVATIONS):
        scale, zp = activation_params(-1.5, 4.0, fmt)
        assert np.dtype(type(zp)) == np.dtype(fmt.dtype)
        err = np.abs(fake_quantize(x, scale, zp, fmt.symmetric, fmt.bits) - x)
        assert err.max() <= scale / 2 + 1e-6
        assert fake_quantize(np.zeros(1, np.float32), scale, zp, fmt.symmetric, fmt.bits)[0] == 0.0
    assert int(activation_params(-1.0, 3.0, TENSORRT_ACTIVATIONS)[1]) == 0
    # after ReLU the UINT8 zero point is 0, so ORT folds the ReLU into the Q
    assert int(activation_params(0.0, 6.0, ORT_ACTIVATIONS)[1]) == 0


def test_weight_axes_follow_output_channels():
    from onnxcomp.passes.qdq.numerics import quantize_weight, weight_axis

    assert weight_axis("Conv", {}, 4) == 0
    assert weight_axis("ConvTranspose", {}, 4) == 1
    assert weight_axis("Gemm", {"transB": 1}, 2) == 0
    assert weight_axis("Gemm", {}, 2) == 1
    assert weight_axis("MatMul", {}, 2) == 1
    assert weight_axis("MatMul", {}, 3) is None
    w = rng_array((6, 4, 3, 3), 0)
    w[2] *= 100  # one loud channel must not cost the others their resolution
    q = quantize_weight(w, 0)
    assert q.values.dtype == np.int8 and q.scale.shape == (6,)
    assert np.abs(q.values).max() <= 127
    deq = q.values.astype(np.float32) * q.scale[:, None, None, None]
    assert np.abs(deq - w).max(axis=(1, 2, 3))[0] <= q.scale[0] / 2 + 1e-7
    assert quantize_weight(w, None).sqnr_db < q.sqnr_db
    assert np.abs(quantize_weight(w, 0, qmax=63).values).max() <= 63


# ---------- target ort ----------

def test_ort_placement_quantizes_conv_chain_with_uint8_and_int32_bias():
    model = conv_relu_conv()
    out, records = quantize(model, "target=ort")
    report = records[-1].report
    assert report.stats["int8_nodes"] == 2 and report.stats["int8_weights"] == 2
    assert report.stats["int32_biases"] == 2
    assert dq_inputs(out, "conv1") == [True, True, True]
    assert dq_inputs(out, "conv2") == [True, True, True]
    for node in out.graph.node:
        if node.op_type == "QuantizeLinear":
            assert init(out, node.input[2]).dtype == np.uint8
    # the ReLU output is quantized (zero point 0), not the Conv output: ORT folds the ReLU;
    # the last Conv's graph output is quantized too (a Conv fuses only with a Q after it), name kept
    q_inputs = {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert q_inputs == {"x", "r1", "y_float"}
    assert [o.name for o in out.graph.output] == ["y"]
    w_dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w1"))
    assert init(out, w_dq.input[0]).dtype == np.int8 and init(out, w_dq.input[1]).shape == (8,)
    assert helper.get_attribute_value(w_dq.attribute[0]) == 0
    feeds = calib(model, 16, seed=5)
    assert cosine(run(model, feeds)["y"], run(out, feeds)["y"]) > 0.995
    assert fused_ops(out).count("QLinearConv") == 2


def test_ort_residual_add_is_quantized_for_qlinearadd():
    model = residual_block()
    out, _ = quantize(model, "target=ort")
    assert dq_inputs(out, "add") == [True, True]
    assert "QLinearAdd" in fused_ops(out)
    feeds = calib(model, 16, seed=5)
    assert cosine(run(model, feeds)["y"], run(out, feeds)["y"]) > 0.99


def test_exclude_and_op_types_keep_nodes_float_with_reasons():
    model = conv_relu_conv()
    out, records = quantize(model, "exclude=[conv2]")
    skipped = {s.name: s.reason for s in records[-1].report.skipped}
    assert skipped["conv2"] == "excluded by option"
    assert dq_inputs(out, "conv2")[1:] == [False, False]
    out, records = quantize(model, "op_types=[Gemm]")
    assert not records[-1].report.modified and "QuantizeLinear" not in ops(out)


def test_gemm_and_matmul_weight_axes():
    nodes = [helper.make_node("Gemm", ["x", "wt", "b"], ["h"], name="gemm_t", transB=1),
             helper.make_node("Gemm", ["h", "w", "b2"], ["h2"], name="gemm"),
             helper.make_node("MatMul", ["h2", "m"], ["y"], name="matmul")]
    inits = {"wt": rng_array((6, 5), 1), "b": rng_array((6,), 2), "w": rng_array((6, 7), 3),
             "b2": rng_array((7,), 4), "m": rng_array((7, 3), 5)}
    model = make_model(nodes, [tensor("x", ["n", 5])], [tensor("y", None)], inits)
    out, _ = quantize(model, "target=tensorrt")
    axes = {}
    prod = producer_map(out)
    for node in out.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            dq = prod[node.input[1]]
            axes[node.name] = (helper.get_attribute_value(dq.attribute[0]), init(out, dq.input[1]).shape)
    assert axes == {"gemm_t": (0, (6,)), "gemm": (1, (7,)), "matmul": (1, (3,))}
    feeds = calib(model, 16, seed=3)
    assert cosine(run(model, feeds)["y"], run(out, feeds)["y"]) > 0.995


# ---------- target tensorrt ----------

def test_tensorrt_format_and_placement_pass_the_checker():
    from onnxcomp.checks import run_checks

    model = residual_block()
    out, _ = quantize(model, "target=tensorrt")
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = init(out, node.input[2])
            assert zp.dtype == np.int8 and not zp.any()
    # bias stays float; Q/DQ only on inputs of the Convs and on the skip branch of the Add
    assert dq_inputs(out, "conv1") == [True, True, False]
    assert dq_inputs(out, "conv2") == [True, True, False]
    assert dq_inputs(out, "add") == [False, True]
    assert {n.input[0] for n in out.graph.node if n.op_type == "QuantizeLinear"} == {"x", "r1"}
    errors = [f for f in run_checks(out, "tensorrt") if f.severity != "info"]
    assert errors == []


def test_tensorrt_moves_qdq_before_zero_pad():
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv")]
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "w": rng_array((4, 3, 3, 3), 1)}
    model = make_model(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", None)], inits)
    out, records = quantize(model, "target=tensorrt")
    assert dq_inputs(out, "pad")[0] and not dq_inputs(out, "conv")[0]
    assert any("before pad" in n for n in records[-1].report.details["insert-qdq"]["notes"])
    from onnxcomp.checks import run_checks

    assert [f.rule for f in run_checks(out, "tensorrt")] == []


def test_tensorrt_concat_inputs_share_one_scale():
    nodes = [helper.make_node("Relu", ["a"], ["ra"], name="ra"),
             helper.make_node("Relu", ["b"], ["rb"], name="rb"),
             helper.make_node("Concat", ["ra", "rb"], ["c"], name="concat", axis=1),
             helper.make_node("Conv", ["c", "w"], ["y"], name="conv")]
    model = make_model(nodes, [tensor("a", ["n", 2, 4, 4]), tensor("b", ["n", 2, 4, 4])], [tensor("y", None)],
                       {"w": rng_array((3, 4, 1, 1), 1)})
    data = calib(model)
    data["b"] = data["b"] * 10  # very different ranges: they must still share one scale
    out, _ = quantize(model, "target=tensorrt", data=data)
    scales = {init(out, n.input[1]).item() for n in out.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] in ("ra", "rb", "c")}
    assert len(scales) == 1
    from onnxcomp.checks import run_checks

    assert not [f for f in run_checks(out, "tensorrt") if f.rule == "TRT-16"]


def layernorm_matmul():
    """x -> MatMul -> LayerNorm (one outlier channel in gamma) -> MatMul: a transformer block's QKV input."""
    gamma = np.ones(16, np.float32)
    gamma[3] = 20.0
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="mm0"),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["ln"], name="ln", axis=-1),
             helper.make_node("MatMul", ["ln", "w1"], ["y"], name="mm1")]
    return make_model(nodes, [tensor("x", ["n", 32, 16])], [tensor("y", None)],
                      {"w0": rng_array((16, 16), 1, 0.3), "gamma": gamma, "beta": np.zeros(16, np.float32),
                       "w1": rng_array((16, 8), 2, 0.3)}, opset=17)


def test_tensorrt_keeps_the_full_range_of_layernorm_outputs():
    model = layernorm_matmul()
    data = calib(model, 16)
    _, records = quantize(model, "target=tensorrt", data=data)
    rows = {r["tensor"]: r for r in records[-1].report.details["insert-qdq"]["activations"]}
    assert rows["x"]["method"] == "percentile"
    assert rows["ln"]["method"] == "minmax"  # percentile would clip its outlier channel
    observed = np.abs(run(_with_output(model, "ln"), data)["ln"]).max()
    assert rows["ln"]["hi"] >= observed * 0.999
    assert any("LayerNorm/GELU" in n for n in records[-1].report.details["insert-qdq"]["notes"])
    _, records = quantize(model, "target=tensorrt,method=percentile", data=data)  # a chosen method holds
    assert {r["method"] for r in records[-1].report.details["insert-qdq"]["activations"]} == {"percentile"}


def test_full_range_finds_decomposed_gelu_but_not_mish():
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.passes.qdq.outlier_ranges import full_range_tensors

    nodes = [helper.make_node("Div", ["x", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["x", "e1"], ["g0"]),
             helper.make_node("Mul", ["g0", "half"], ["gelu"]),
             helper.make_node("Softplus", ["x"], ["sp"]), helper.make_node("Tanh", ["sp"], ["t"]),
             helper.make_node("Mul", ["x", "t"], ["mish"])]
    model = make_model(nodes, [tensor("x", ["n", 4])], [tensor("gelu", None), tensor("mish", None)],
                       {"sqrt2": np.float32(1.4142135), "one": np.float32(1.0), "half": np.float32(0.5)})
    assert full_range_tensors(to_graph(model), ["gelu", "mish", "x"]) == {"gelu"}


def _with_output(model, name: str):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


# ---------- bad input ----------

def test_no_calibration_data_is_a_clear_error():
    with pytest.raises(InputError, match="calibration data is required"):
        run_pass(conv_relu_conv(), "insert-qdq")


def test_already_quantized_model_is_refused():
    out, _ = quantize(conv_relu_conv())
    with pytest.raises(InputError, match="already quantized"):
        quantize(out, data=calib(conv_relu_conv()))


def test_old_opset_is_refused():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], {"w": rng_array((2, 3, 1, 1))},
                       opset=12)
    with pytest.raises(InputError, match="opset 12"):
        quantize(model)


def test_mismatched_calibration_data_is_a_clear_error():
    model = conv_relu_conv()
    with pytest.raises(InputError):
        quantize(model, data={"x": rng_array((4, 5, 8, 8))})


def test_unsupported_ops_get_skip_reasons():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
             helper.make_node("Conv", ["t", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)],
                       {"w": rng_array((4, 3, 1, 1)), "w2": rng_array((2, 4, 1, 1), 1)})
    _, records = quantize(model)
    skipped = {s.name: s.reason for s in records[-1].report.skipped}
    assert "no int8 kernel rule for Tanh" in skipped["tanh"]


def test_unfolded_batchnorm_is_reported():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    inits = {"w": rng_array((4, 3, 1, 1)), "g": np.ones(4, np.float32), "b": np.zeros(4, np.float32),
             "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32)}
    model = make_model(nodes, [tensor("x", ["n", 3, 4, 4])], [tensor("y", None)], inits)
    _, records = quantize(model)
    skipped = {s.name: s.reason for s in records[-1].report.skipped}
    assert "run fold-bn" in skipped["bn"]


# ---------- models/ ----------

@pytest.fixture(scope="module")
def digits(models_dir):
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    model = load_model(models_dir / "digits_cnn.onnx")
    return model, load_data(models_dir / "digits_calib.npz", model), load_data(models_dir / "digits_test.npz", model)


@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_digits_cnn_keeps_accuracy(digits, target):
    import onnxcomp

    model, data, test = digits
    result = onnxcomp.optimize(model, None, f"cleanup,fold-bn,insert-qdq{{target={target}}}", data=data,
                               val_data=test, target=target)
    v = result.validation
    print(target, v["accuracy_original"], v["accuracy_output"])
    assert v["accuracy_output"] >= v["accuracy_original"] - 0.01
    from onnxcomp.checks import run_checks

    errors = [f for f in run_checks(result.model, target) if f.severity == "error"]
    assert errors == []
    if target == "ort":
        fused = fused_ops(result.model)
        assert fused.count("QLinearConv") == 9 and "Conv" not in fused
    _check_golden(result.model, f"qdq_placement_digits_{target}.txt")


def test_mlp_and_transformer_block(models_dir):
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    mlp = load_model(models_dir / "mlp.onnx")
    result = onnxcomp.optimize(mlp, None, "cleanup,fold-bn,insert-qdq", data=load_data(models_dir / "mlp_calib.npz", mlp),
                               val_data=load_data(models_dir / "mlp_test.npz", mlp))
    assert result.validation["accuracy_output"] >= result.validation["accuracy_original"] - 0.01

    block = load_model(models_dir / "transformer_block.onnx")
    data = load_data(models_dir / "transformer_calib.npz", block)
    result = onnxcomp.optimize(block, None, "cleanup,insert-qdq", data=data,
                               val_data=load_data(models_dir / "transformer_test.npz", block))
    record = result.records[-1]
    details = record.report.details["insert-qdq"]
    assert details["scheme"] == "inputs"
    assert result.validation["outputs"][0]["cosine"] > 0.99
    reasons = {s.reason for s in record.report.skipped}
    assert any(r.startswith("kept float: softmax") for r in reasons)
    assert any("normalization" in r for r in reasons)
    prod = producer_map(result.model)
    for node in result.model.graph.node:  # only MatMul/Gemm read dequantized values
        if any(i in prod and prod[i].op_type == "DequantizeLinear" for i in node.input):
            assert node.op_type in ("MatMul", "Gemm"), node.name
    # ranges in the report: one row per quantized activation with scale and zero point
    assert all(row["scale"] > 0 for row in details["activations"])


@pytest.mark.parametrize("name, calib", [("mlp", "mlp_calib"), ("transformer_block", "transformer_calib")])
def test_tensorrt_output_of_models_passes_check(models_dir, name, calib):
    import onnxcomp
    from onnxcomp.checks import run_checks
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    model = load_model(models_dir / f"{name}.onnx")
    data = {k: v[:32] for k, v in load_data(models_dir / f"{calib}.npz", model).items()}
    result = onnxcomp.optimize(model, None, "cleanup,fold-bn,insert-qdq{target=tensorrt}", data=data)
    assert [f.line() for f in run_checks(result.model, "tensorrt") if f.severity != "info"] == []
    assert "QuantizeLinear" in ops(result.model)


def test_max_drop_keeps_sensitive_layers_float(models_dir):
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    block = load_model(models_dir / "transformer_block.onnx")
    data = {k: v[:32] for k, v in load_data(models_dir / "transformer_calib.npz", block).items()}
    base = onnxcomp.optimize(block, None, "cleanup", check_output=False).model
    full = onnxcomp.optimize(base, None, "insert-qdq", data=data, check_output=False)
    drop_all = 1 - onnxcomp.measure.compare.measure(base, full.model, data).cosine
    budget = drop_all / 3
    result = onnxcomp.optimize(base, None, f"insert-qdq{{max_drop={budget}}}", data=data, check_output=False)
    info = result.records[-1].report.details["insert-qdq"]["budget"]
    assert info["float_nodes"], "the budget is below the all-int8 drop, so some layer must stay float"
    assert info["drop"] <= budget
    assert onnxcomp.measure.compare.measure(base, result.model, data).drop == pytest.approx(info["drop"], abs=1e-6)
    with pytest.raises(ToleranceError, match="cannot be met"):
        onnxcomp.optimize(base, None, "insert-qdq{max_drop=1e-12}", data=data, check_output=False)


def test_cli_quantize_and_check(models_dir, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True)

    for target in ("ort", "tensorrt"):
        out = tmp_path / f"q_{target}.onnx"
        result = cli("optimize", models_dir / "digits_cnn.onnx", "-o", out, "-q", "--quantize", "int8",
                     "--calib", models_dir / "digits_calib.npz", "--val", models_dir / "digits_test.npz",
                     "--target", target)
        assert result.returncode == 0, result.stderr
        assert "accuracy: original" in result.stdout and "insert-qdq" in result.stdout
        check = cli("check", out, "--target", "tensorrt")
        assert check.returncode == (0 if target == "tensorrt" else 3), check.stdout + check.stderr
    result = cli("optimize", models_dir / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--quantize", "int8")
    assert result.returncode == 2 and "calibration data is required" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.onnx").exists()


# ---------- golden placement dumps ----------

def placement_text(model) -> str:
    """One line per compute node: op, name, and which inputs are dequantized (weights stripped)."""
    prod = producer_map(model)
    inits = {t.name: t for t in model.graph.initializer}
    lines = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        marks = []
        for name in node.input:
            p = prod.get(name)
            if p is not None and p.op_type == "DequantizeLinear":
                zp = inits.get(p.input[2]) if len(p.input) > 2 else None
                kind = onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name if zp is not None else "?"
                axis = next((a.i for a in p.attribute if a.name == "axis"), None) if p.input[1] in inits and \
                    np.prod(inits[p.input[1]].dims or [1]) > 1 else None
                marks.append(f"dq[{kind}{'' if axis is None else f',axis={axis}'}]")
            else:
                marks.append("float" if name not in inits else "const")
        lines.append(f"{node.op_type:18} {node.name:32} {' '.join(marks)}")
    return "\n".join(lines) + "\n"


def _check_golden(model, filename: str) -> None:
    text = placement_text(model)
    path = GOLDEN / filename
    regen = "ONNXCOMP_REGEN_GOLDEN=1 ../.venv/bin/python -m pytest test_insert_qdq.py -k digits_cnn_keeps_accuracy"
    if os.environ.get("ONNXCOMP_REGEN_GOLDEN"):  # only on purpose: a missing file is a failure, not a new golden
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing; write it on purpose from tests/: {regen}"
    assert text == path.read_text(), f"placement changed; regenerate {path} on purpose (ONNXCOMP_REGEN_GOLDEN=1)"


def test_a_missing_golden_file_fails_and_is_not_written(monkeypatch, tmp_path, digits):
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", tmp_path)
    monkeypatch.delenv("ONNXCOMP_REGEN_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="missing.*ONNXCOMP_REGEN_GOLDEN=1"):
        _check_golden(digits[0], "absent.txt")
    assert not (tmp_path / "absent.txt").exists()
    monkeypatch.setenv("ONNXCOMP_REGEN_GOLDEN", "1")  # on purpose: written, then it holds
    _check_golden(digits[0], "absent.txt")
    monkeypatch.delenv("ONNXCOMP_REGEN_GOLDEN")
    _check_golden(digits[0], "absent.txt")


# ---------- sites=measured: the per-kind choice ----------

def test_site_kinds_name_each_quantized_node_once(models_dir):
    import onnxcomp
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.graph.load import load_model
    from onnxcomp.passes.qdq.placement import PlacementOptions, plan_placement
    from onnxcomp.passes.qdq.site_choice import site_kinds

    block = onnxcomp.optimize(load_model(models_dir / "transformer_block.onnx"), None, "cleanup",
                              check_output=False).model
    graph = to_graph(block)
    plan = plan_placement(graph, PlacementOptions())
    kinds = site_kinds(graph, plan.nodes)
    assert sorted(n for nodes in kinds.values() for n in nodes) == sorted(plan.nodes)
    assert all(kind.split()[1] in ("x·W", "x·y") for kind in kinds)
    # the attention product of two activations is a kind of its own, apart from the weight MatMuls
    assert any(" x·y " in kind for kind in kinds) and any(" x·W " in kind for kind in kinds)
    assert any(kind.endswith("after Softmax") for kind in kinds)


def test_site_decision_floats_only_what_is_slower_and_less_accurate_in_int8():
    from onnxcomp.passes.qdq.site_choice import KindRow, SiteChoiceLimits, decide

    limits = SiteChoiceLimits()
    def row(ratio, gain=float("nan")):
        return decide(KindRow("k", ["n"], cosine_int8=0.99, cosine_float=0.99 + gain, time_ratio=ratio), limits)
    assert row(0.90).decision == "int8"  # faster: kept, accuracy not asked
    assert row(1.0 + limits.min_time_gain / 2).decision == "int8"  # level within the noise margin
    assert row(1.10, 1e-6).decision == "int8"  # slower but free in accuracy (and a quarter of the bytes)
    slow = row(1.10, 1e-3)
    assert slow.decision == "float" and "slower" in slow.reason
    noisy = decide(KindRow("k", ["n"], cosine_int8=0.99, cosine_float=0.999, time_ratio=1.10), limits, margin=0.15)
    assert noisy.decision == "int8"  # a slowdown within the measured noise decides nothing


def test_measured_sites_report_and_keep_the_model_valid(models_dir):
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    block = load_model(models_dir / "transformer_block.onnx")
    data = {k: v[:32] for k, v in load_data(models_dir / "transformer_calib.npz", block).items()}
    base = onnxcomp.optimize(block, None, "cleanup", check_output=False).model
    result = onnxcomp.optimize(base, None, "insert-qdq{sites=measured}", data=data, check_output=False)
    record = result.records[-1]
    details = record.report.details["insert-qdq"]
    choice = details["site_choice"]
    assert choice["kinds"] and choice["seconds"] < 60
    assert choice["margin"] >= max(0.02, choice["timing_noise"])  # never finer than the measured noise
    assert sum(k["nodes"] for k in choice["kinds"]) == len(details["int8_nodes"]) + len(choice["float_nodes"])
    for kind in choice["kinds"]:
        assert kind["decision"] in ("int8", "float") and kind["reason"]
        assert 0 < kind["time_ratio"] < 10
        # accuracy is measured where INT8 is slower: it decides only there
        slower = 1 + choice["margin"]
        if abs(kind["time_ratio"] - slower) > 1e-3:  # the report rounds the ratio
            assert (kind["cosine_float"] is None) == (kind["time_ratio"] < slower)
    floated = {k["kind"] for k in choice["kinds"] if k["decision"] == "float"}
    assert bool(floated) == bool(choice["float_nodes"])  # float kinds only survive a passed check
    if choice["float_nodes"]:
        assert choice["check"]["kept"] and choice["check"]["cosine"] >= choice["check"]["cosine_all_int8"]
        skipped = dict((s.name, s.reason) for s in record.report.skipped)
        assert all("measured site choice" in skipped[n] for n in choice["float_nodes"])
        assert not set(choice["float_nodes"]) & set(details["int8_nodes"])
    fid = onnxcomp.measure.compare.measure(base, result.model, data)
    assert fid.cosine > 0.99


def test_measured_sites_leave_a_cnn_alone():
    _, records = quantize(conv_relu_conv(), "sites=measured")
    details = records[-1].report.details["insert-qdq"]
    assert details["scheme"] == "full" and "not applied" in details["site_choice"]["note"]
    assert details["site_choice"]["float_nodes"] == []
