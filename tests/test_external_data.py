"""A few-MB model forced to external data: load, optimize, save beside the output, round-trip equal."""

from __future__ import annotations

import os

import bad_inputs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import assert_same_outputs
from onnx import numpy_helper

import onnxcomp
from onnxcomp.errors import InputError


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return bad_inputs.weighty_model()


def _ort_outputs(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_save_streams_weights_without_touching_the_model(model, tmp_path):
    before = model.SerializeToString()
    path = onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before  # the caller's model is not converted in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert path.stat().st_size < 20_000
    data_size = (tmp_path / "m.onnx.data").stat().st_size
    assert data_size >= onnxcomp.graph.save.weight_bytes(model) * 0.99
    stored = onnx.load(str(path), load_external_data=False)
    for init in stored.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: int(e.value) for e in init.external_data if e.key in ("offset", "length")}
            if info["length"] >= 64 * 1024:
                assert info["offset"] % 4096 == 0, init.name  # big tensors can be memory-mapped
        else:
            assert init.ByteSize() < 2048  # only small tensors stay inline


def test_round_trip_is_exact_and_runtime_reads_it(model, tmp_path):
    path = onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    loaded = onnxcomp.load_model(path)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in loaded.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(t), originals[t.name])
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(_ort_outputs(path, x), _ort_outputs(tmp_path / "inline.onnx", x)
                                  if onnxcomp.save(model, tmp_path / "inline.onnx", external_data=False) else None)


def test_optimize_external_model_into_another_folder(model, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = onnxcomp.save(model, src / "model.onnx", external_data=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = onnxcomp.optimize(path, out_dir / "opt.onnx", "cleanup,fold-bn", verify="numeric")
    assert sorted(p.name for p in out_dir.iterdir()) == ["opt.onnx", "opt.onnx.data"]  # layout kept
    assert result.records[1].report.stats["folded"] == 2
    optimized = onnxcomp.load_model(out_dir / "opt.onnx")
    assert not any(n.op_type in ("BatchNormalization", "Identity") for n in optimized.graph.node)
    assert_same_outputs(model, optimized, atol=1e-5, rtol=1e-4)
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_ort_outputs(out_dir / "opt.onnx", x), _ort_outputs(path, x), atol=1e-5, rtol=1e-4)
    # Saving again over it replaces both files and leaves nothing else behind.
    onnxcomp.save(optimized, out_dir / "opt.onnx", external_data=True)
    assert sorted(p.name for p in out_dir.iterdir()) == ["opt.onnx", "opt.onnx.data"]
    assert sorted(p.name for p in src.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_no_external_data_flag_inlines_weights(model, tmp_path):
    path = onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    result = onnxcomp.optimize(path, tmp_path / "inline.onnx", "cleanup", external_data=False)
    assert not (tmp_path / "inline.onnx.data").exists()
    assert result.output["file_size"] > 4 * 1024**2


@pytest.mark.parametrize("location", ["../m.onnx.data", "/etc/hostname", "sub/../../m.onnx.data", "", "a\0b"])
def test_escaping_or_invalid_locations_are_refused(model, tmp_path, location):
    folder = tmp_path / "inner"
    folder.mkdir()
    onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    stored = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for init in stored.graph.initializer:
        for e in init.external_data:
            if e.key == "location":
                e.value = location
    (folder / "m.onnx").write_bytes(stored.SerializeToString())
    for external in (True, False):  # inspect/check read without the data: still refused
        with pytest.raises(InputError, match="outside the model folder"):
            onnxcomp.load_model(folder / "m.onnx", load_external_data=external)


def test_symlinked_data_files_are_refused(model, tmp_path):
    onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    os.rename(tmp_path / "m.onnx.data", tmp_path / "real.data")
    os.symlink("real.data", tmp_path / "m.onnx.data")  # stays inside, still refused (as the onnx loader does)
    with pytest.raises(InputError, match="symbolic link"):
        onnxcomp.load_model(tmp_path / "m.onnx")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    os.symlink(tmp_path / "real.data", inner / "m.onnx.data")  # leaves inner/: refused
    with pytest.raises(InputError, match="outside the model folder"):
        onnxcomp.load_model(inner / "m.onnx")


def test_truncated_data_file_is_refused_before_reading(model, tmp_path):
    onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(InputError, match="holds"):
        onnxcomp.load_model(tmp_path / "m.onnx")


# Typed-field tensors (float_data, int32_data, ...; not raw_data): each dtype a field stores differently,
# 4-bit ones packed two to a byte. Saving them as external data once crashed on NumPy 2 (ndarray.newbyteorder).
TYPED = [onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE,
         onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32,
         onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL, onnx.TensorProto.INT4,
         onnx.TensorProto.UINT4]


def typed_field_model(count: int = 3001) -> onnx.ModelProto:
    """One initializer per dtype, each big enough to go to the data file, held in its typed field."""
    from onnx import helper

    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []
    for i, dtype in enumerate(TYPED):
        np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
        if dtype == onnx.TensorProto.BOOL:
            values = rng.integers(0, 2, count).astype(bool)
        elif np.issubdtype(np_dtype, np.floating) or dtype == onnx.TensorProto.BFLOAT16:
            values = rng.standard_normal(count).astype(np_dtype)
            values[:3] = np.array([np.nan, -0.0, np.inf]).astype(np_dtype)   # bit patterns must survive
        else:
            low, high = (0, 16) if dtype == onnx.TensorProto.UINT4 else (-8, 8)
            values = rng.integers(low, high, count).astype(np_dtype)
        init = helper.make_tensor(f"t{i}", dtype, [count], values, raw=False)
        assert not init.HasField("raw_data")
        inits.append(init)
        nodes.append(helper.make_node("Identity", [f"t{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", dtype, [count]))
    graph = helper.make_graph(nodes, "typed", [], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_typed_field_tensors_round_trip_bit_exact_through_external_data(tmp_path):
    model = typed_field_model()
    onnx.checker.check_model(model)
    path = onnxcomp.save(model, tmp_path / "m.onnx", external_data=True)
    stored = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    loaded = onnxcomp.load_model(path)
    originals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert len(loaded.graph.initializer) == len(TYPED)
    for t in loaded.graph.initializer:
        got, want = numpy_helper.to_array(t), originals[t.name]
        assert t.data_type == TYPED[int(t.name[1:])] and got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == want.tobytes(), t.name
