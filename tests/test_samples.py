"""Samples (onnxcomp.measure.samples): every data source, fixed-batch models, inputs that are not a
stack of samples, --input-shapes / --make-static / --input-value, ids that stay inside their table,
and runtime errors that keep their point (issue 11, items 2-4)."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.graph.signature import specs_of
from onnxcomp.measure.runtime import random_inputs, run, run_batched, session
from onnxcomp.measure.samples import Samples, as_samples
from onnxcomp.optimize import optimize

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def fixed_batch_cnn(batch: int) -> onnx.ModelProto:
    """Conv -> Relu -> Reshape([batch, -1]) -> MatMul: x[batch,3,8,8] -> y[batch,10], batch fixed."""
    rng = np.random.default_rng(batch)
    inits = [_init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             _init("fc", (rng.standard_normal((256, 10)) * 0.1).astype(np.float32)),
             _init("shape", np.array([batch, -1], np.int64))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)


def scaled_mlp() -> onnx.ModelProto:
    """y = MatMul(x, w) * scale: x['N',4], scale a 0-d float (a sample rate, a gain)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Mul", ["h", "scale"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                          helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                  [_init("w", np.random.default_rng(7).standard_normal((4, 3)).astype(np.float32))])


def gru_with_state() -> onnx.ModelProto:
    """A GRU whose state input h0[1,'B',8] has its batch on axis 1, then MatMul and a 0-d gain.

    X['T','B',4] (sequence first), h0[1,'B',8], scale[] -> y['B',3] and the new state h['1','B',8].
    """
    rng = np.random.default_rng(3)
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = [_init("W", f(1, 24, 4)), _init("R", f(1, 24, 8)), _init("Bias", f(1, 48)), _init("w2", f(8, 3)),
             _init("axes", np.array([0], np.int64))]
    nodes = [helper.make_node("GRU", ["X", "W", "R", "Bias", "", "h0"], ["Y", "h"], hidden_size=8),
             helper.make_node("Squeeze", ["h", "axes"], ["hs"]), helper.make_node("MatMul", ["hs", "w2"], ["m"]),
             helper.make_node("Mul", ["m", "scale"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", 4]),
                          helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "B", 8]),
                          helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3]),
                   helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "B", 8])], inits)


def embedding_model() -> onnx.ModelProto:
    """Token-type ids ['N','S'] int64 into a 2-row table (through Unsqueeze/Squeeze), word ids into a 50-row one."""
    inits = [_init("types", RNG.standard_normal((2, 4)).astype(np.float32)),
             _init("words", RNG.standard_normal((50, 4)).astype(np.float32)),
             _init("ax", np.array([0], np.int64)), _init("fc", RNG.standard_normal((4, 3)).astype(np.float32))]
    nodes = [helper.make_node("Unsqueeze", ["tt", "ax"], ["tt1"]), helper.make_node("Squeeze", ["tt1", "ax"], ["tt2"]),
             helper.make_node("Gather", ["types", "tt2"], ["te"]), helper.make_node("Gather", ["words", "ids"], ["we"]),
             helper.make_node("Add", ["te", "we"], ["e"]), helper.make_node("MatMul", ["e", "fc"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
                          helper.make_tensor_value_info("tt", TensorProto.INT64, ["N", "S"])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 3])], inits)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture()
def cli(capsys):
    """The real entry point, run in this process (fast): cli(*args) -> returncode, stdout, stderr."""
    from onnxcomp.cli import main

    def invoke(*args) -> Ran:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)

    return invoke


def save(model, path):
    onnx.save(model, str(path))
    return path


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


# ---------- every source kind ----------

def test_npz_and_dict_cut_into_calls_that_merge_back(tmp_path):
    model = scaled_mlp()
    x = RNG.standard_normal((10, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, scale=np.float32(2.0), labels=np.arange(10) % 3)
    for source in (tmp_path / "d.npz", {"x": x, "scale": np.float32(2.0), "labels": np.arange(10) % 3}):
        samples = as_samples(source, model)
        assert len(samples) == 10 and samples.samples == 10 and samples.mergeable
        assert samples[3]["x"].shape == (1, 4) and samples[3]["scale"].shape == ()
        assert samples.batch_sizes(4) == [4, 4, 2]
        merged = list(samples.batches(4))
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in merged]), x)
        assert all(b["scale"] == 2.0 for b in merged)
        np.testing.assert_array_equal(samples.labels(), np.arange(10) % 3)
        assert samples.take(3).samples == 3 and samples.first(4).samples == 4
    assert as_samples(tmp_path / "d.npz", model).stacked() is None  # a 0-d input is not a stack


def test_a_1d_array_for_a_0d_input_is_one_value_per_call():
    samples = as_samples({"x": np.ones((3, 4), np.float32), "scale": np.array([1, 2, 3], np.float32)}, scaled_mlp())
    assert [float(c["scale"]) for c in samples] == [1.0, 2.0, 3.0]
    assert not samples.mergeable and samples.batch_sizes(32) == [1, 1, 1]
    out = run_batched(session(scaled_mlp()), samples)
    assert out["y"].shape == (3, 3)


def test_npy_feeds_a_one_input_model_and_is_refused_for_more(tmp_path):
    np.save(tmp_path / "x.npy", images(5))
    samples = as_samples(tmp_path / "x.npy", fixed_batch_cnn(1))
    assert len(samples) == 5 and samples[0]["x"].shape == (1, 3, 8, 8)
    with pytest.raises(InputError, match="one-input model; this one has 2 inputs"):
        as_samples(tmp_path / "x.npy", scaled_mlp())


LOADER = '''
import numpy as np
import helper_next_to_me


def load():
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32), "labels": np.array([i % 10])}
            for i in range(6)]


def lazily():
    for i in range(3):
        yield {"x": np.full((1, 3, 8, 8), float(i), np.float64)}  # float64: cast to the input's float32


def one_dict():
    return {"x": np.zeros((1, 3, 8, 8), np.float32)}


def nothing():
    return 3


def broken():
    raise RuntimeError("the dataset is not mounted")


def too_big():
    return [{"x": np.zeros((16, 3, 8, 8), np.float32)}]
'''


def test_a_python_data_loader_by_path(tmp_path):
    (tmp_path / "data.py").write_text(LOADER)
    (tmp_path / "helper_next_to_me.py").write_text("VALUE = 1\n")
    model = fixed_batch_cnn(1)
    before_path, before_modules = list(sys.path), set(sys.modules)
    samples = as_samples(f"{tmp_path / 'data.py'}:load", model)
    assert len(samples) == 6 and samples.labels().tolist() == [0, 1, 2, 3, 4, 5]
    assert sys.path == before_path and "helper_next_to_me" not in sys.modules
    assert not any(m.startswith("onnxcomp_data_loader") for m in set(sys.modules) - before_modules)
    lazy = as_samples(f"{tmp_path / 'data.py'}:lazily", model)
    assert len(lazy) == 3 and lazy[2]["x"].dtype == np.float32 and float(lazy[2]["x"].max()) == 2.0
    for function, message in [("missing", "has no function 'missing'"), ("one_dict", "returned one dict"),
                              ("nothing", "iterable of feed dicts"), ("broken", "the dataset is not mounted"),
                              ("too_big", "call 1: input 'x': dim 0 is 1, data has 16")]:
        with pytest.raises(InputError, match=message):
            as_samples(f"{tmp_path / 'data.py'}:{function}", model)
    with pytest.raises(InputError, match="no such file"):
        as_samples(f"{tmp_path / 'nope.py'}:load", model)


def test_a_folder_of_onnx_test_data_sets(tmp_path):
    model = scaled_mlp()
    for i in range(3):
        folder = tmp_path / f"test_data_set_{i}"
        folder.mkdir()
        x = np.full((2, 4), float(i), np.float32)
        # the first set names its tensors, the others rely on the input order
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x, "x" if i == 0 else "").SerializeToString())
        (folder / "input_1.pb").write_bytes(numpy_helper.from_array(np.float32(i + 1), "").SerializeToString())
        (folder / "output_0.pb").write_bytes(b"ignored")
    samples = as_samples(tmp_path, model)
    assert len(samples) == 3 and samples.samples == 6
    assert [float(c["scale"]) for c in samples] == [1.0, 2.0, 3.0] and float(samples[2]["x"][0, 0]) == 2.0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="test_data_set"):
        as_samples(empty, model)


def test_lists_generators_and_calibration_data_readers():
    model = fixed_batch_cnn(1)
    feeds = [{"x": images(1, seed)} for seed in range(4)]

    class Reader:  # ONNX Runtime's CalibrationDataReader protocol
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    for source in (feeds, (f for f in feeds), Reader()):
        samples = as_samples(source, model)
        assert len(samples) == 4 and not samples.mergeable  # a fixed batch never stacks
        np.testing.assert_array_equal(samples[3]["x"], feeds[3]["x"])
    with pytest.raises(InputError, match="holds no model calls"):
        as_samples([], model)
    with pytest.raises(InputError, match="expected a dict of input arrays"):
        as_samples([feeds[0]["x"]], model)


# ---------- fixed batches ----------

def test_a_fixed_batch_is_never_split_or_stacked(caplog):
    x = images(18)
    with caplog.at_level(logging.INFO, logger="onnxcomp"):
        four = as_samples({"x": x}, fixed_batch_cnn(4), "d.npz")
    assert len(four) == 4 and all(c["x"].shape == (4, 3, 8, 8) for c in four)
    assert "18 samples do not fill calls of 4" in caplog.text and "the last 2 are left out" in caplog.text
    assert four.batch_sizes(32) == [4, 4, 4, 4] and four.stacked() is None
    with pytest.raises(InputError, match="input 'x': dim 0 is 4, data has 3"):
        as_samples({"x": x[:3]}, fixed_batch_cnn(4))
    out = run_batched(session(fixed_batch_cnn(4)), four)  # outputs with a batch axis concatenate
    assert out["y"].shape == (16, 10)


def test_the_dim_mismatch_message_keeps_the_point():
    sess = session(fixed_batch_cnn(1))
    with pytest.raises(InputError, match=r"input 'x': dim 0 is 1, data has 16$"):
        run(sess, {"x": images(16)})
    # a mismatch the feeds do not explain: ONNX Runtime's whole message, on one line
    gru = session(gru_with_state())
    with pytest.raises(InputError) as caught:
        run(gru, {"X": np.zeros((5, 2, 4), np.float32), "h0": np.zeros((1, 1, 8), np.float32),
                  "scale": np.float32(1)})
    message = str(caught.value)
    assert "\n" not in message and "initial_h" in message and "{1,2,8}" in message.replace(" ", "")


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_models_quantize_and_compare_on_npz_data(cli, tmp_path, batch):
    model = save(fixed_batch_cnn(batch), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=images(16))
    np.savez(tmp_path / "val.npz", x=images(12, seed=2), labels=np.arange(12) % 10)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    r = cli("optimize", model, "-o", out, "--quantize", "int8", "--calib", tmp_path / "calib.npz",
            "--val", tmp_path / "val.npz", "--verify", "numeric", "--report", report)
    assert r.returncode == 0, r.stderr
    validation = json.loads(report.read_text())["validation"]
    assert validation["inputs"].startswith("12 samples")
    assert validation["outputs"][0]["shape"] == [12, 10] and validation["outputs"][0]["cosine"] > 0.99
    r = cli("compare", model, out, "--data", tmp_path / "val.npz", "--json")
    assert r.returncode == 4, r.stderr  # INT8 is outside the default exact tolerance, but it ran
    result = json.loads(r.stdout)
    assert result["outputs"][0]["shape"] == [12, 10] and "accuracy_reference" in result


def test_max_drop_searches_run_each_call_at_its_fixed_batch(tmp_path):
    model = fixed_batch_cnn(4)
    data = {"x": images(16)}
    loose = optimize(model, pipeline="insert-qdq{max_drop=0.5}", data=data)
    budget = loose.records[-1].report.details["insert-qdq"]["budget"]
    assert budget["float_nodes"] == [] and budget["drop"] <= 0.5
    with pytest.raises(ToleranceError, match="cannot be met"):
        optimize(model, pipeline="insert-qdq{max_drop=0}", data=data)
    pruned = optimize(model, pipeline="remove-channels{ratio=0.5,round_to=1,max_drop=0.2}", data=data)
    stats = pruned.records[-1].report.stats
    assert stats["measured_drop"] <= 0.2 and pruned.records[-1].report.details["backoff"]


# ---------- inputs that are not a stack of samples ----------

def test_state_with_its_batch_on_axis_1_and_a_0d_gain_through_quantization(cli, tmp_path, monkeypatch):
    model = save(gru_with_state(), tmp_path / "gru.onnx")
    (tmp_path / "state.py").write_text('''
import numpy as np


def load(seed=0, calls=6):
    rng = np.random.default_rng(seed)
    return [{"X": rng.standard_normal((5, 2, 4)).astype(np.float32), "h0": np.zeros((1, 2, 8), np.float32),
             "scale": np.float32(0.5)} for _ in range(calls)]


def held_out():
    return load(seed=1, calls=3)
''')
    samples = as_samples(f"{tmp_path / 'state.py'}:load", gru_with_state())
    assert not samples.mergeable and samples.stacked() is None
    out = run_batched(session(gru_with_state()), samples, 32)
    # a call holds one sample (axis 0 is not the batch of every input): y[2,3] has no axis 0 of that
    # length and is stacked, one row per call; h[1,2,8] has, and is concatenated
    assert out["y"].shape == (6, 2, 3) and out["h"].shape == (6, 2, 8)
    q, report = tmp_path / "q.onnx", tmp_path / "r.json"
    monkeypatch.chdir(tmp_path)  # --val names the loader relative to the working folder
    r = cli("optimize", model, "-o", q, "--quantize", "int8", "--calib", f"{tmp_path / 'state.py'}:load",
            "--val", "state.py:held_out", "--verify", "numeric", "--report", report)
    assert r.returncode == 0, r.stderr
    validation = json.loads(report.read_text())["validation"]
    assert validation["inputs"] == "3 samples of the given data"  # one per call: its batch axis is not axis 0
    assert min(d["cosine"] for d in validation["outputs"]) > 0.98


def test_npz_with_a_0d_array_and_fixed_state_works(cli, tmp_path):
    model = save(scaled_mlp(), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=RNG.standard_normal((20, 4)).astype(np.float32), scale=np.float32(0.25))
    r = cli("optimize", model, "-o", tmp_path / "q.onnx", "--quantize", "int8", "--calib", tmp_path / "d.npz")
    assert r.returncode == 0, r.stderr
    assert "20 samples of the given data" in r.stdout
    r = cli("compare", model, model, "--data", tmp_path / "d.npz")
    assert r.returncode == 0, r.stderr
    # a fixed-shape state next to a dynamic batch is one constant fed to every call
    static = gru_with_state()
    static.graph.input[1].type.tensor_type.shape.dim[1].dim_value = 1
    samples = as_samples({"X": np.zeros((7, 1, 4), np.float32), "h0": np.ones((1, 1, 8), np.float32),
                          "scale": np.float32(1)}, static)
    assert len(samples) == 7 and all(c["h0"].shape == (1, 1, 8) for c in samples) and not samples.mergeable


# ---------- shapes and values for the run ----------

def test_input_shapes_and_make_static(cli, tmp_path):
    model = save(scaled_mlp(), tmp_path / "m.onnx")
    out, report = tmp_path / "s.onnx", tmp_path / "r.json"
    r = cli("optimize", model, "-o", out, "--input-shapes", "x:3,4", "--make-static", "--verify", "numeric",
            "--report", report)
    assert r.returncode == 0, r.stderr
    result = onnx.load(out)
    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    assert dims(result.graph.input[0]) == [3, 4] and dims(result.graph.output[0]) == [3, 3]
    feeds = {"x": RNG.standard_normal((3, 4)).astype(np.float32), "scale": np.float32(3)}
    np.testing.assert_allclose(run(session(result), feeds)["y"], run(session(scaled_mlp()), feeds)["y"], rtol=1e-6)
    assert json.loads(report.read_text())["validation"]["outputs"][0]["shape"] == [3, 3]
    # without --make-static the output keeps its dynamic dims; the run used 3 rows
    r = cli("optimize", model, "-o", tmp_path / "d.onnx", "--input-shapes", "x:3,4", "--report", report)
    assert r.returncode == 0, r.stderr
    assert dims(onnx.load(tmp_path / "d.onnx").graph.input[0]) == ["N", 4]
    assert json.loads(report.read_text())["validation"]["outputs"][0]["shape"] == [3, 3]
    for bad, message in [("x:3", "1 dims given"), ("y:3,4", "no input 'y'"), ("x:3,5", "dim 1 is 4"),
                         ("x:a,4", "integers")]:
        r = cli("optimize", model, "-o", tmp_path / "e.onnx", "--input-shapes", bad)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)
    r = cli("optimize", model, "-o", tmp_path / "e.onnx", "--make-static")
    assert r.returncode == 2 and "--make-static: input 'x' dim 0 ('N') has no size" in r.stderr
    r = cli("inspect", model, "--input-shapes", "x:3,4", "--json")
    assert r.returncode == 0, r.stderr
    from onnxcomp.graph.signature import parse_input_shapes

    assert parse_input_shapes(["x:1,3,8,8,mask:1,8", "input:0:1,2 y:3"]) == {
        "x": (1, 3, 8, 8), "mask": (1, 8), "input:0": (1, 2), "y": (3,)}


def test_input_value_pins_generated_data(cli, tmp_path):
    reference = save(scaled_mlp(), tmp_path / "a.onnx")
    fixed = scaled_mlp()  # the same model with its gain baked in at 16000
    fixed.graph.input.pop()
    fixed.graph.initializer.append(_init("scale", np.array(16000, np.float32)))
    candidate = save(fixed, tmp_path / "b.onnx")
    assert cli("compare", reference, candidate).returncode == 4
    r = cli("compare", reference, candidate, "--input-value", "scale=16000")
    assert r.returncode == 0, r.stderr
    feeds = random_inputs(scaled_mlp(), batch=2, values={"scale": 16000})
    assert feeds["scale"].shape == () and float(feeds["scale"]) == 16000.0
    r = cli("compare", reference, candidate, "--input-value", "gain=2")
    assert r.returncode == 2 and "no input 'gain'" in r.stderr


def test_generated_ids_stay_inside_their_tables(cli, tmp_path):
    model = embedding_model()
    feeds = random_inputs(model, {"S": 64}, batch=8)
    assert set(np.unique(feeds["tt"])) == {0, 1} and 0 <= feeds["ids"].min() and feeds["ids"].max() < 50
    r = cli("optimize", save(model, tmp_path / "e.onnx"), "-o", tmp_path / "o.onnx", "--verify", "numeric",
            "--dim", "S=16")
    assert r.returncode == 0, r.stderr
    # a 0-d integer (a length, a trip count) is small and positive, a bool true/false
    scalar = _model([helper.make_node("Range", ["zero", "n", "one"], ["r"])],
                    [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
                    [helper.make_tensor_value_info("r", TensorProto.INT64, ["L"])],
                    [_init("zero", np.array(0, np.int64)), _init("one", np.array(1, np.int64))])
    values = [int(random_inputs(scalar, seed=s)["n"]) for s in range(20)]
    assert min(values) >= 1 and max(values) <= 8


def test_samples_are_what_the_python_api_and_pass_context_take():
    model = fixed_batch_cnn(1)
    result = optimize(model, pipeline="insert-qdq", data=[{"x": images(1, s)} for s in range(4)])
    assert result.validation["inputs"] == "4 samples of the given data"
    samples = as_samples({"x": images(4)}, model)
    assert isinstance(samples, Samples) and as_samples(samples, model) is samples


def test_calibration_runs_fixed_batches_as_they_are_and_merges_dynamic_ones():
    from onnxcomp.passes.qdq.calibration import collect_stats

    fixed = collect_stats(fixed_batch_cnn(4), as_samples({"x": images(16)}, fixed_batch_cnn(4)), batch_size=16)
    assert (fixed.batches, fixed.samples) == (4, 16)
    dynamic = scaled_mlp()
    merged = collect_stats(dynamic, {"x": RNG.standard_normal((20, 4)).astype(np.float32), "scale": np.float32(1)},
                           batch_size=8)
    assert (merged.batches, merged.samples) == (3, 20)


def test_stacked_gives_the_old_layout_back_only_where_it_exists():
    x, labels = images(6), np.arange(6)
    dynamic = fixed_batch_cnn(1)
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    dynamic.graph.initializer[2].CopyFrom(_init("shape", np.array([-1, 256], np.int64)))  # really dynamic inside
    stacked = as_samples({"x": x, "labels": labels}, dynamic).stacked()
    np.testing.assert_array_equal(stacked["x"], x)
    np.testing.assert_array_equal(stacked["labels"], labels)
    calls = as_samples([{"x": x[i:i + 2], "labels": labels[i:i + 2]} for i in (0, 2, 4)], dynamic)
    assert calls.samples == 6 and calls.batch_sizes(4) == [4, 2]
    np.testing.assert_array_equal(calls.stacked()["x"], x)
    assert as_samples({"x": x}, fixed_batch_cnn(1)).stacked() is None


def test_distillation_refuses_data_that_does_not_stack(tmp_path):
    pytest.importorskip("torch")
    import onnxcomp

    model = save(fixed_batch_cnn(1), tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=images(8))
    with pytest.raises(InputError, match="does not stack that way"):
        onnxcomp.distill(model, model, tmp_path / "d.npz")


# ---------- merged runs are probed on the model ----------

def hidden_batch_one() -> onnx.ModelProto:
    """x['N',4] -> Reshape([1, 4]) -> MatMul -> y['N',3]: the declared batch is dynamic, the Reshape fixes it at 1
    (khmersm's `view` does the same)."""
    inits = [_init("shape", np.array([1, 4], np.int64)),
             _init("w", np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32))]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)


def batch_mixing() -> onnx.ModelProto:
    """y = x - mean(x over the whole run): runs merged without failing, but every sample sees the others."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=1), helper.make_node("Sub", ["x", "m"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])


def batch_on_axis_1() -> onnx.ModelProto:
    """y = Transpose(x): a ['N',4] input gives a [4,'N'] output (a CRNN's [time, batch, classes])."""
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, "N"])])


def calls_of_one(n: int, seed: int = 2) -> list[dict]:
    x = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    return [{"x": x[i:i + 1]} for i in range(n)]


@pytest.mark.parametrize("make", [hidden_batch_one, batch_mixing])
def test_calls_run_one_at_a_time_where_merging_fails_or_changes_the_numbers(make):
    model = make()
    feeds = calls_of_one(5)
    sess = session(model)
    one_by_one = np.concatenate([run(sess, f)["y"] for f in feeds])
    for samples in (as_samples(feeds, model), as_samples(feeds, specs_of(model))):  # probed on the model / session
        out = run_batched(sess, samples, 32)
        np.testing.assert_array_equal(out["y"], one_by_one)
        assert not samples.mergeable and samples.batch_sizes(32) == [1] * 5
        assert samples.first(3).batch_sizes(32) == [1] * 3  # slices share the verdict
    spec_only = as_samples(feeds, specs_of(model))
    assert spec_only.mergeable and spec_only.batch_sizes(32) == [5]  # what the specs alone say


def test_merged_runs_stay_where_they_give_the_same_numbers():
    for model in (scaled_mlp(), batch_on_axis_1()):
        feeds = [{**f, "scale": np.float32(2)} for f in calls_of_one(5)] if len(model.graph.input) > 1 else calls_of_one(5)
        samples = as_samples(feeds, model)
        assert samples.mergeable and samples.batch_sizes(4) == [4, 1]


def test_a_hidden_fixed_batch_quantizes_and_validates_on_its_calls(tmp_path):
    model = hidden_batch_one()
    result = optimize(model, pipeline="insert-qdq", data=calls_of_one(6), val_data=calls_of_one(4, seed=3))
    assert result.validation["inputs"] == "4 samples of the given data"
    assert result.records[-1].report.modified
    reference, quantized = session(model), session(result.model)
    for feeds in calls_of_one(4, seed=3):
        expected, got = run(reference, feeds)["y"], run(quantized, feeds)["y"]
        assert float(np.dot(expected.ravel(), got.ravel()) / np.linalg.norm(expected) / np.linalg.norm(got)) > 0.99


def one_input_mlp() -> onnx.ModelProto:
    """x['N',4] -> MatMul -> Relu -> MatMul -> y['N',3] (ops the ONNX student importer trains)."""
    rng = np.random.default_rng(11)
    inits = [_init("w1", rng.standard_normal((4, 8)).astype(np.float32)),
             _init("w2", rng.standard_normal((8, 3)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)


def every_source_form(tmp_path, x: np.ndarray) -> dict[str, str]:
    """The same calls (one sample each) as FILE.py:FUNCTION, a folder of test-data sets and a .npy."""
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "feeds.py").write_text("import numpy as np\n\ndef load():\n"
                                       f"    x = np.load({str(tmp_path / 'x.npy')!r})\n"
                                       "    return [{'x': x[i:i + 1]} for i in range(len(x))]\n")
    for i in range(len(x)):
        folder = tmp_path / "sets" / f"test_data_set_{i}"
        folder.mkdir(parents=True)
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x[i:i + 1], "x").SerializeToString())
    return {"loader": f"{tmp_path / 'feeds.py'}:load", "folder": str(tmp_path / "sets"), "npy": str(tmp_path / "x.npy")}


def test_compare_and_distill_take_every_source_form(cli, tmp_path):
    pytest.importorskip("torch")
    model = save(one_input_mlp(), tmp_path / "m.onnx")
    x = np.random.default_rng(4).standard_normal((6, 4)).astype(np.float32)
    for form, source in every_source_form(tmp_path, x).items():
        r = cli("compare", model, model, "--data", source, "--json")
        assert r.returncode == 0, (form, r.stderr)
        assert json.loads(r.stdout)["outputs"][0]["shape"] == [6, 3], form
        out = tmp_path / f"student_{form}.onnx"
        r = cli("distill", "--teacher", model, "--student", model, "--data", source, "--val", source, "-o", out,
                "--epochs", "1", "--batch-size", "4", "-q")
        assert r.returncode == 0 and out.is_file(), (form, r.stderr)


def test_generated_inputs_fall_apart_into_samples_only_where_the_whole_batch_fails():
    from onnxcomp.measure.samples import generated_calls

    for make, sizes in ((hidden_batch_one, [1] * 8), (batch_mixing, [8]), (scaled_mlp, [8])):
        model = make()
        feeds = random_inputs(model, seed=0, batch=8)
        samples = generated_calls(feeds, model)
        assert samples.batch_sizes(32) == sizes, make.__name__
        got = run_batched(session(model), samples, 32)["y"]
        if sizes == [8]:  # merged back: the very run one_call gives
            np.testing.assert_array_equal(got, run(session(model), feeds)["y"])
        else:
            np.testing.assert_array_equal(got, np.concatenate([run(session(model), c)["y"] for c in samples]))
    gru = gru_with_state()
    assert len(generated_calls(random_inputs(gru, seed=0, batch=8), gru)) == 1  # state [1,'B',8]: one call


def test_a_hidden_fixed_batch_validates_on_generated_inputs(cli, tmp_path):
    model = save(hidden_batch_one(), tmp_path / "m.onnx")
    result = optimize(str(model), verify="numeric")
    assert result.validation["inputs"] == "seeded random inputs"
    assert all(o["within"] for o in result.validation["outputs"])
    r = cli("compare", model, model, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outputs"][0]["shape"] == [8, 3]


def _defaulted_model() -> onnx.ModelProto:
    """IR 9, `thr` both an input and an initializer: an input with a default value."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "thr"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("thr", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
         numpy_helper.from_array(np.array([0.5], np.float32), "thr")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_data_for_an_input_with_a_default_is_refused_unless_it_is_the_default(caplog):
    """Passes fold an input with a default as a constant: a different value in the data would be
    ignored without a word, so it is one line; the default itself (a loader that always sends it) passes."""
    model = _defaulted_model()
    x = np.ones((2, 4), np.float32)
    assert len(as_samples({"x": x, "thr": np.array([0.5], np.float32)}, model)) == 2  # samples
    with pytest.raises(InputError, match="'thr', which has a default in the model"):
        as_samples({"x": x, "thr": np.array([2.0], np.float32)}, model)
    with pytest.raises(InputError, match="call 2: gives input 'thr'"):
        as_samples([{"x": x}, {"x": x, "thr": np.array([2.0], np.float32)}], model)
    with caplog.at_level(logging.WARNING, logger="onnxcomp"):
        result = optimize(model, data={"x": x})
    assert "thr" in caplog.text and result.input["defaulted_inputs"] == ["thr"]
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert np.allclose(run(session(result.model), {"x": x})["y"], x + 0.5)


def test_generated_validation_falls_back_to_batch_1_for_a_state_fixed_at_batch_1():
    """A GRU whose input batch is dynamic but whose state input is fixed at batch 1 (an exported
    streaming model) cannot run generated inputs at batch 8: validation runs at batch 1 instead."""
    rng = np.random.default_rng(0)
    hidden, width = 8, 4
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),  # batch first in, time first to the GRU
         helper.make_node("GRU", ["xt", "w", "r", "", "", "h0"], ["", "h"], hidden_size=hidden)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, width]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "N", hidden])],
        [numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, width)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32), "r")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = optimize(model)
    assert result.validation["inputs"] == "seeded random inputs"
    assert result.validation["outputs"][0]["max_abs"] == 0


def test_generated_inputs_take_a_size_the_model_runs_when_1_fails():
    """Free height/width at 1 break a strided model (pool then upsample back: 1 -> 1 -> 2, the
    Concat with the input fails); generated inputs take the first size it runs (32) instead."""
    graph = helper.make_graph(
        [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
         helper.make_node("Concat", ["x", "u"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "H", "W"])],
        [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    messages = []
    result = optimize(model, progress=messages.append)
    assert any("H, W at 1; using 32" in m for m in messages)
    assert result.validation["outputs"][0]["max_abs"] == 0
