"""Crashes found by benchmarks/bench_fuzz.py, rebuilt by code: each must now be a clear refusal.

Found on the first 40 s run (seed 0): an IndexError in verification (Conv with a 0-d weight), an
onnx-graphsurgeon cycle exception (a subgraph reading a value produced after its If node), a
KeyError inside graphsurgeon's constant folding (If without then_branch) and UnicodeDecodeErrors
on export (node names that are not valid UTF-8).
"""

from __future__ import annotations

import subprocess
import sys

import bad_inputs
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxcomp
from onnxcomp.errors import InputError


def _save(model, tmp_path, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _optimize(path, tmp_path):
    return onnxcomp.optimize(path, tmp_path / "out.onnx", "cleanup,fold-bn")


def test_conv_with_scalar_weight_is_refused(tmp_path):
    m = bad_inputs.good_model()
    w = next(t for t in m.graph.initializer if t.name == "w")
    w.CopyFrom(numpy_helper.from_array(np.float32(1.0), "w"))
    with pytest.raises(InputError, match="weight rank 0"):
        _optimize(_save(m, tmp_path), tmp_path)
    assert not (tmp_path / "out.onnx").exists()


def test_cycle_through_a_subgraph_read_is_refused(tmp_path):
    """If's branch reads x_id, which is computed from If's own output."""
    m = bad_inputs._control_flow("if")
    identity = next(n for n in m.graph.node if n.name == "outer_id")
    identity.input[0] = "y"
    with pytest.raises(InputError, match="cycle"):
        _optimize(_save(m, tmp_path), tmp_path)


def test_if_without_branches_does_not_crash_cleanup(tmp_path):
    """A Reshape of two constants retyped to If (no branches): graphsurgeon's folding raised KeyError."""
    m = bad_inputs._control_flow("loop")
    node = next(n for n in m.graph.node if n.op_type == "Reshape")
    node.op_type = "If"
    path = _save(m, tmp_path)
    graph = onnxcomp.graph.convert.to_graph(onnxcomp.load_model(path))
    (record,) = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup")).run(graph)
    assert any("constant folding" in s.name for s in record.report.skipped)
    # Through the CLI: the input's own invalidity is named, exit 2, nothing written.
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(path), "-o", str(tmp_path / "o.onnx"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "input model" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_names_that_are_not_utf8_are_refused(tmp_path):
    m = bad_inputs.good_model()
    data = m.SerializeToString().replace(b"relu", b"r\xffeu")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(InputError, match="UTF-8"):
        onnxcomp.load_model(path)


def test_structural_mutations_from_the_fuzzer_end_cleanly(tmp_path):
    """A fixed slice of the fuzzer's structural mutations: each is ok or a one-line refusal."""
    import random

    sys.path.insert(0, str(bad_inputs.Path(__file__).resolve().parent.parent))
    from benchmarks.bench_fuzz import mutate_structure, run_model_case, seed_models

    rng = random.Random(1234)
    seeds = seed_models()
    outcomes = set()
    for i in range(60):
        outcomes.add(run_model_case(mutate_structure(seeds[i % len(seeds)], rng).SerializeToString(), tmp_path))
    assert outcomes <= {"ok", "refused"} and "refused" in outcomes


def test_opset_zero_or_negative_is_refused(tmp_path):
    m = bad_inputs.good_model()
    m.opset_import[0].version = -3
    with pytest.raises(InputError):
        _optimize(_save(m, tmp_path), tmp_path)


# Second run (120 s, seed 1): three more, all in the loader's tensor checks.

def test_values_in_the_wrong_typed_field_are_refused(tmp_path):
    """float_data holds the values but data_type says INT64: numpy failed to reshape 0 values."""
    m = bad_inputs.good_model()
    t = next(t for t in m.graph.initializer if t.name == "g")
    values = numpy_helper.to_array(t)
    t.ClearField("raw_data")
    t.float_data.extend(values.tolist())
    t.data_type = onnx.TensorProto.INT64
    with pytest.raises(InputError, match="holds 0 values in int64_data"):
        onnxcomp.load_model(_save(m, tmp_path))


def test_graph_name_that_is_not_utf8_is_refused(tmp_path):
    m = bad_inputs.good_model()
    m.graph.name = "marker"
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString().replace(b"marker", b"ma\xffker"))
    with pytest.raises(InputError, match="UTF-8"):
        onnxcomp.load_model(path)


@pytest.mark.parametrize("dims", [[-(2**40)], [3]])
def test_string_tensor_with_lying_shape_is_refused(tmp_path, dims):
    m = bad_inputs.good_model()
    t = onnx.TensorProto(name="s", data_type=onnx.TensorProto.STRING, dims=dims)
    t.string_data.append(b"only one")
    m.graph.initializer.append(t)
    with pytest.raises(InputError, match="negative dimension|holds 1 strings"):
        onnxcomp.load_model(_save(m, tmp_path))


# Third run (180 s, seed 2): one more, in graphsurgeon's export.

def test_dangling_read_inside_a_subgraph_is_refused(tmp_path):
    """A Loop body's BN reading a name nothing defines (and an untyped body output): graphsurgeon's
    exporter raised UnboundLocalError; now the input check names the dangling read."""
    m = bad_inputs._control_flow("loop")
    body = next(n for n in m.graph.node if n.op_type == "Loop").attribute[0].g
    next(n for n in body.node if n.op_type == "BatchNormalization").input[1] = "lop_g"
    body.output[0].type.Clear()
    with pytest.raises(InputError, match="'lop_g' .* inside Loop"):
        _optimize(_save(m, tmp_path), tmp_path)
    assert not (tmp_path / "out.onnx").exists()


# Fourth run (90 s, seed 3): pass statistics on a bfloat16 initializer.

def test_bfloat16_initializer_is_counted_not_crashed_on(tmp_path):
    """graphsurgeon hands bfloat16 over as an ONNX enum numpy cannot read: graph_counts raised TypeError."""
    m = bad_inputs._control_flow("if")
    t = next(t for t in m.graph.initializer if t.name == "bias_outer")
    t.data_type = onnx.TensorProto.BFLOAT16  # 4 floats' bytes reread as 8 bfloat16 values: shape lies
    del t.dims[:]
    t.dims.extend([8])
    graph = onnxcomp.graph.convert.to_graph(onnxcomp.load_model(_save(m, tmp_path)))
    counts = onnxcomp.measure.counts.graph_counts(graph)
    assert counts["params"] >= 8
    (record,) = onnxcomp.PassManager(onnxcomp.parse_pipeline("cleanup")).run(graph)  # dedupe keys too
    assert record.after["params"] >= 8
