"""Saving is atomic and external data round-trips; the input is never written."""

import numpy as np
import onnx
import pytest
from helpers import assert_same_outputs, make_model, rng_array, tensor
from onnx import helper

import onnxcomp
from onnxcomp.errors import InputError


def mlp_model():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [tensor("x", ["N", 64])], [tensor("y", None)],
                      {"w1": rng_array((64, 256), 1), "w2": rng_array((256, 32), 2)})


def test_external_data_round_trip(tmp_path):
    model = mlp_model()
    path = onnxcomp.save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size >= (64 * 256 + 256 * 32) * 4
    assert path.stat().st_size < 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    loaded = onnxcomp.load_model(path)
    assert_same_outputs(model, loaded)
    result = onnxcomp.optimize(path, tmp_path / "out.onnx", "cleanup,fold-bn")
    assert result.validation["outputs"][0]["within"]


def test_missing_external_file_and_escaping_location(tmp_path):
    model = mlp_model()
    path = onnxcomp.save(model, tmp_path / "ext.onnx", external_data=True)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(InputError, match="missing"):
        onnxcomp.load_model(path)
    m = onnx.load(str(path), load_external_data=False)
    for init in m.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    onnx.save(m, str(tmp_path / "escape.onnx"))
    with pytest.raises(InputError, match="outside the model folder"):
        onnxcomp.load_model(tmp_path / "escape.onnx")


def test_save_refuses_the_input_path_and_leaves_no_temp_files(tmp_path):
    model = mlp_model()
    path = onnxcomp.save(model, tmp_path / "m.onnx")
    with pytest.raises(InputError, match="refusing"):
        onnxcomp.save(model, path, forbid=path)
    onnxcomp.save(onnxcomp.load(path), tmp_path / "copy.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx", "m.onnx"]
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "copy.onnx")).graph.initializer[0]),
        onnx.numpy_helper.to_array(model.graph.initializer[0]))
