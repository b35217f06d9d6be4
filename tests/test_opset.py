"""Old opsets and IR versions: converted to what the pipeline needs, checked, reported; refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxcomp
from onnxcomp.errors import InputError
from onnxcomp.graph.opset import convert_opset, default_opset, ir_for_opset, lower_ir_version
from onnxcomp.measure.runtime import run, runtime_max_ir, session

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _conv_model(opset: int, ir: int) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> global pool -> Flatten -> Gemm at an old opset."""
    rng = np.random.default_rng(0)
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], rng.standard_normal(216).astype(np.float32)),
        helper.make_tensor("scale", TensorProto.FLOAT, [8], rng.uniform(0.5, 1.5, 8).astype(np.float32)),
        helper.make_tensor("bias", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32)),
        helper.make_tensor("mean", TensorProto.FLOAT, [8], rng.standard_normal(8).astype(np.float32)),
        helper.make_tensor("var", TensorProto.FLOAT, [8], rng.uniform(0.5, 2, 8).astype(np.float32)),
        helper.make_tensor("fw", TensorProto.FLOAT, [4, 8], rng.standard_normal(32).astype(np.float32)),
        helper.make_tensor("fb", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"], name="bn"),
        helper.make_node("Relu", ["b"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if ir <= 3:  # IR 3: initializers are graph inputs too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def test_convert_opset_raises_ir_with_the_opset_and_keeps_outputs():
    model = _conv_model(9, 3)
    converted = convert_opset(model, 13)
    assert default_opset(converted) == 13 and converted.ir_version >= ir_for_opset(13)
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(session(converted), x)["y"], run(session(model), x)["y"], rtol=1e-5, atol=1e-6)
    assert convert_opset(converted, 11) is converted  # never downwards


@pytest.mark.parametrize("pipeline", ["cleanup,fold-bn", "cleanup,fold-bn,insert-qdq", "remove-channels{ratio=0.5}",
                                      "sparsify-initializers{sparsity=0.5}"])
def test_old_ir3_model_goes_through_every_pass_and_the_step_is_reported(tmp_path, pipeline):
    path = tmp_path / "old.onnx"
    onnx.save(_conv_model(9, 3), path)
    data = {"x": np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    result = onnxcomp.optimize(path, tmp_path / "out.onnx", pipeline, data=data, verify="numeric")
    first = result.records[0]
    needed = 13 if "insert-qdq" in pipeline else 10
    assert first.name == "convert-opset" and first.exact
    assert first.report.stats["opset_from"] == 9 and first.report.stats["opset_to"] == needed
    assert first.report.stats["max_abs_diff"] < 1e-4
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out)
    assert default_opset(out) == needed
    assert result.input["opset"] == 9 and result.output["opset"] == needed
    run(session(out), {"x": data["x"][:1]})
    report = result.as_dict()
    assert report["passes"][0]["name"] == "convert-opset"
    json.dumps(report)  # the JSON report carries it


def test_new_enough_model_is_not_converted(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_model(13, 7), path)
    result = onnxcomp.optimize(path, None, "cleanup")
    assert [r.name for r in result.records] == ["cleanup"]


def test_unconvertible_model_is_one_line_exit_2(tmp_path):
    model = _conv_model(9, 4)
    model.graph.node[2].op_type = "NotAnOnnxOp"
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match="cannot convert opset 9 -> 10: operator.*NotAnOnnxOp"):
        onnxcomp.optimize(path, None, "cleanup")
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(path), "-o", str(tmp_path / "o.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "NotAnOnnxOp" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_ir_newer_than_the_runtime_is_lowered_when_the_opset_allows(tmp_path):
    limit = runtime_max_ir()
    model = _conv_model(13, limit + 1)
    path = tmp_path / "new_ir.onnx"
    onnx.save(model, path)
    result = onnxcomp.optimize(path, tmp_path / "out.onnx", "cleanup,fold-bn", verify="numeric")
    assert result.input["ir_version"] == limit + 1
    out = onnx.load(tmp_path / "out.onnx")
    assert out.ir_version <= limit
    session(out)  # loads in the installed runtime


def test_ir_that_cannot_be_lowered_names_both_versions():
    model = _conv_model(13, 99)
    model.opset_import[0].version = 99  # an opset no release defines lowers nothing
    with pytest.raises(InputError, match="IR version .* reads IR version 5 at most"):
        lower_ir_version(model, 5)
    assert lower_ir_version(_conv_model(13, 7), 9) is None


@pytest.mark.parametrize("name", ["light_squeezenet", "light_shufflenet"])
def test_model_zoo_structures_convert_and_quantize(tmp_path, name):
    """The model zoo's opset-9, IR-3 files (dummy weights): cleanup, fold-bn and insert-qdq run and check."""
    path = LIGHT / f"{name}.onnx"
    if not path.exists():
        pytest.skip("onnx's backend test data is not installed")
    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    (x,) = [i for i in model.graph.input if i.name not in inits]
    shape = [d.dim_value for d in x.type.tensor_type.shape.dim]
    data = {x.name: np.random.default_rng(0).uniform(0, 1, [4] + shape[1:]).astype(np.float32)}
    result = onnxcomp.optimize(path, tmp_path / "q.onnx", "cleanup,fold-bn,insert-qdq{target=tensorrt}",
                               data={k: v[:1] for k, v in data.items()}, verify="checker")
    assert result.records[0].report.stats["opset_to"] == 13
    onnx.checker.check_model(onnx.load(tmp_path / "q.onnx"))


def test_a_checker_complaint_of_the_input_is_not_blamed_on_a_pass(tmp_path):
    """An input the checker already refuses (here: a graph output listed twice) is the input's fault:
    exact passes at --verify checker still run; the problem is reported as the input's."""
    model = _conv_model(13, 7)
    model.graph.output.append(model.graph.output[0])
    path = tmp_path / "dup_out.onnx"
    onnx.save(model, path)
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(path), "-o", str(tmp_path / "o.onnx"),
                        "--verify", "checker"], capture_output=True, text=True)
    assert "pass 'cleanup'" not in r.stderr and "pass 'fold-bn'" not in r.stderr, r.stderr
