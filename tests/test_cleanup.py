"""cleanup: identities, dead nodes, duplicates, constant and shape folding, no-op nodes, fusions.

Every rewrite kind gets one small model: the report counts it, the node list shows it, and ONNX
Runtime gives the same outputs (at two batch sizes where a dim is dynamic, so that a fold which
froze a dynamic dim would show).
"""

import numpy as np
import onnx
import pytest
from helpers import assert_same_outputs, make_model, random_feeds, rng_array, run, run_pass, tensor
from onnx import TensorProto, helper

INT64_MAX = np.iinfo(np.int64).max


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _same_at_batches(a, b, batches=(1, 3)) -> None:
    """Outputs equal (1e-5) with every symbolic dim at each of `batches`."""
    for batch in batches:
        feeds = random_feeds(a, seed=batch, batch=batch)
        expected, got = run(a, feeds), run(b, feeds)
        assert expected.keys() == got.keys()
        for name in expected:
            assert got[name].shape == expected[name].shape, name
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=1e-5, err_msg=name)


def _i64(*values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ---------- what was there before ----------

def test_removes_identity_dead_nodes_and_duplicates():
    w = rng_array((4, 4), 1)
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="id0"),
        helper.make_node("MatMul", ["x_id", "w1"], ["a"], name="mm1"),
        helper.make_node("MatMul", ["a", "w2"], ["b"], name="mm2"),  # w2 == w1 byte for byte
        helper.make_node("Relu", ["a"], ["dead"], name="dead_relu"),  # output used by nobody
        helper.make_node("Identity", ["b"], ["y"], name="id_out"),  # feeds the graph output
    ]
    model = make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4])], {"w1": w, "w2": w.copy()})
    out, records = run_pass(model, "cleanup")
    stats = records[0].report.stats
    assert _ops(out) == ["MatMul", "MatMul"]
    assert stats["identity_removed"] == 2 and stats["duplicate_initializers_merged"] == 1
    assert stats["dead_nodes_removed"] == 1
    assert len(out.graph.initializer) == 1
    assert [o.name for o in out.graph.output] == ["y"]  # the interface keeps its names
    assert_same_outputs(model, out)


def test_folds_constant_subgraph():
    nodes = [
        helper.make_node("Transpose", ["wt"], ["w"], name="t", perm=[1, 0]),
        helper.make_node("Mul", ["w", "two"], ["w2"], name="scale"),
        helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", None)],
                       {"wt": rng_array((5, 3)), "two": np.float32(2.0)})
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["MatMul"]
    assert records[0].report.stats["constant_nodes_folded"] == 2
    assert_same_outputs(model, out)


def test_quantized_weights_are_not_folded_back_to_float():
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4])], [tensor("y", None)],
                       {"wq": np.arange(16, dtype=np.int8).reshape(4, 4), "ws": np.float32(0.1), "wz": np.int8(0)})
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["DequantizeLinear", "MatMul"]
    assert not records[0].report.modified


def test_hand_written_dequantization_keeps_weights_int8_when_asked():
    """Cast(int8 table) * scale is a dequantization: folding it stores four times the bytes."""
    nodes = [
        helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wf", "ws"], ["w"], name="scale"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    wq = np.random.default_rng(0).integers(-127, 127, (64, 32)).astype(np.int8)
    model = make_model(nodes, [tensor("x", [2, 64])], [tensor("y", None)],
                       {"wq": wq, "ws": np.full((1, 32), 0.02, np.float32)})
    out, records = run_pass(model, "cleanup{fold_dequantization=false}")
    assert _ops(out) == ["Cast", "Mul", "MatMul"] and _init_bytes(out) < 2 * wq.size
    assert any("dequantization" in s.reason for s in records[0].report.skipped)
    assert_same_outputs(model, out)


def test_second_run_is_a_no_op_and_untouched_models_stay_identical():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    out, records = run_pass(model, "cleanup")
    assert not records[0].report.modified
    assert _ops(out) == ["Relu"]


def test_identity_between_input_and_output_is_kept():
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id")]
    model = make_model(nodes, [tensor("x", [2], TensorProto.FLOAT)], [tensor("y", [2])])
    out, _ = run_pass(model, "cleanup")
    assert _ops(out) == ["Identity"]
    assert_same_outputs(model, out)


# ---------- no-op nodes: one model per rule ----------

def _relu_after(op, inputs, attrs=None, extra_nodes=(), outputs=("t",)):
    return list(extra_nodes) + [helper.make_node(op, inputs, list(outputs), name="under_test", **(attrs or {})),
                                helper.make_node("Relu", [outputs[0]], ["y"], name="relu")]


NOOP_CASES = {
    # name: (nodes, input shape, initializers, stat, remaining ops)
    "reshape to its own shape": (_relu_after("Reshape", ["x", "s"]), [2, 3, 4], {"s": _i64(2, 3, 4)},
                                 "noop_reshape_removed", ["Relu"]),
    "reshape with the one -1 in x's place": (_relu_after("Reshape", ["x", "s"]), [2, 3, 4], {"s": _i64(2, -1, 4)},
                                             "noop_reshape_removed", ["Relu"]),
    "flatten of a 2-d tensor": (_relu_after("Flatten", ["x"], {"axis": 1}), [2, 3], {},
                                "noop_flatten_removed", ["Relu"]),
    "transpose by the identity": (_relu_after("Transpose", ["x"], {"perm": [0, 1, 2]}), [2, 3, 4], {},
                                  "noop_transpose_removed", ["Relu"]),
    "cast to its own type": (_relu_after("Cast", ["x"], {"to": TensorProto.FLOAT}), [2, 3], {},
                             "noop_cast_removed", ["Relu"]),
    "cast to double and back": (_relu_after("Cast", ["d"], {"to": TensorProto.FLOAT}, [
        helper.make_node("Cast", ["x"], ["d"], name="wide", to=TensorProto.DOUBLE)]), [2, 3], {},
        "noop_cast_removed", ["Relu"]),
    "squeeze of an unsqueeze": (_relu_after("Squeeze", ["u", "ax"], extra_nodes=[
        helper.make_node("Unsqueeze", ["x", "ax"], ["u"], name="unsq")]), [2, 3], {"ax": _i64(1)},
        "noop_squeeze_removed", ["Relu"]),
    "expand to its own shape": (_relu_after("Expand", ["x", "s"]), [2, 3], {"s": _i64(2, 3)},
                                "noop_expand_removed", ["Relu"]),
    "expand by ones": (_relu_after("Expand", ["x", "s"]), [2, 3], {"s": _i64(1, 1)}, "noop_expand_removed", ["Relu"]),
    "tile by ones": (_relu_after("Tile", ["x", "r"]), [2, 3], {"r": _i64(1, 1)}, "noop_tile_removed", ["Relu"]),
    "concat of one input": (_relu_after("Concat", ["x"], {"axis": 0}), [2, 3], {}, "noop_concat_removed", ["Relu"]),
    "concat with an empty input": (_relu_after("Concat", ["x", "e"], {"axis": 1}), [2, 3],
                                   {"e": np.zeros((2, 0), np.float32)}, "noop_concat_removed", ["Relu"]),
    "split into one": (_relu_after("Split", ["x"], {"axis": 0}), [2, 3], {}, "noop_split_removed", ["Relu"]),
    "slice over everything": (_relu_after("Slice", ["x", "b", "e", "a"]), [2, 3],
                              {"b": _i64(0, 0), "e": _i64(INT64_MAX, 3), "a": _i64(0, 1)},
                              "noop_slice_removed", ["Relu"]),
    "pad by zeros": (_relu_after("Pad", ["x", "p"]), [2, 3], {"p": _i64(0, 0, 0, 0)}, "noop_pad_removed", ["Relu"]),
    "dropout at inference": (_relu_after("Dropout", ["x"]), [2, 3], {}, "dropout_removed", ["Relu"]),
    "mul by one": (_relu_after("Mul", ["x", "one"]), [2, 3], {"one": np.float32(1)}, "noop_mul_removed", ["Relu"]),
    "one times x": (_relu_after("Mul", ["one", "x"]), [2, 3], {"one": np.ones(3, np.float32)},
                    "noop_mul_removed", ["Relu"]),
    "add of zeros": (_relu_after("Add", ["x", "z"]), [2, 3], {"z": np.zeros((1, 3), np.float32)},
                     "noop_add_removed", ["Relu"]),
    "minus zero": (_relu_after("Sub", ["x", "z"]), [2, 3], {"z": np.float32(0)}, "noop_sub_removed", ["Relu"]),
    "divided by one": (_relu_after("Div", ["x", "one"]), [2, 3], {"one": np.float32(1)}, "noop_div_removed", ["Relu"]),
    "where with a constant condition": (_relu_after("Where", ["c", "x", "z"]), [2, 3],
                                        {"c": np.ones((2, 3), bool), "z": np.float32(0)},
                                        "noop_where_removed", ["Relu"]),
}


@pytest.mark.parametrize("case", list(NOOP_CASES))
def test_noop_nodes_are_removed(case):
    nodes, shape, inits, stat, remaining = NOOP_CASES[case]
    model = make_model(nodes, [tensor("x", shape)], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    assert records[0].report.stats.get(stat) == 1, records[0].report.stats
    assert _ops(out) == remaining
    assert_same_outputs(model, out)
    _, records = run_pass(out, "cleanup")
    assert not records[0].report.modified, records[0].report.stats


KEPT_CASES = {
    # Look like no-ops, are not: each must stay.
    "cast through int32 is lossy": (_relu_after("Cast", ["i"], {"to": TensorProto.FLOAT}, [
        helper.make_node("Cast", ["x"], ["i"], name="narrow", to=TensorProto.INT32)]), [2, 3], {}),
    "reshape to another shape": (_relu_after("Reshape", ["x", "s"]), [2, 3, 4], {"s": _i64(6, 4)}),
    "expand that broadcasts": (_relu_after("Expand", ["x", "s"]), [1, 3], {"s": _i64(2, 3)}),
    "slice in reverse": (_relu_after("Slice", ["x", "b", "e", "a", "st"]), [2, 3],
                         {"b": _i64(-1), "e": _i64(-INT64_MAX), "a": _i64(1), "st": _i64(-1)}),
    "mul by ones that broadcast x up": (_relu_after("Mul", ["x", "one"]), [3], {"one": np.ones((2, 3), np.float32)}),
    "pad by one": (_relu_after("Pad", ["x", "p"]), [2, 3], {"p": _i64(0, 1, 0, 0)}),
}


@pytest.mark.parametrize("case", list(KEPT_CASES))
def test_lookalikes_are_kept(case):
    nodes, shape, inits = KEPT_CASES[case]
    model = make_model(nodes, [tensor("x", shape)], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == _ops(model), records[0].report.stats
    assert_same_outputs(model, out)


def test_transpose_pairs_cancel_or_merge():
    cancel = [helper.make_node("Transpose", ["x"], ["a"], name="t1", perm=[1, 0, 2]),
              helper.make_node("Transpose", ["a"], ["b"], name="t2", perm=[1, 0, 2]),
              helper.make_node("Relu", ["b"], ["y"], name="relu")]
    model = make_model(cancel, [tensor("x", [2, 3, 4])], [tensor("y", None)])
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["Relu"] and records[0].report.stats["transpose_pairs_merged"] == 1
    assert_same_outputs(model, out)

    merge = [helper.make_node("Transpose", ["x"], ["a"], name="t1", perm=[1, 2, 0]),
             helper.make_node("Transpose", ["a"], ["b"], name="t2", perm=[1, 2, 0]),
             helper.make_node("Relu", ["b"], ["y"], name="relu")]
    model = make_model(merge, [tensor("x", [2, 3, 4])], [tensor("y", None)])
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["Transpose", "Relu"] and records[0].report.stats["transpose_pairs_merged"] == 1
    assert list(out.graph.node[0].attribute[0].ints) == [2, 0, 1]
    assert_same_outputs(model, out)


def test_reshape_and_unsqueeze_pairs_merge():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["a"], name="r1"),
             helper.make_node("Reshape", ["a", "s2"], ["b"], name="r2"),
             helper.make_node("Unsqueeze", ["b", "ax1"], ["c"], name="u1"),
             helper.make_node("Unsqueeze", ["c", "ax2"], ["y"], name="u2")]
    model = make_model(nodes, [tensor("x", [2, 3, 4])], [tensor("y", None)],
                       {"s1": _i64(6, 4), "s2": _i64(4, 6), "ax1": _i64(0), "ax2": _i64(2)})
    out, records = run_pass(model, "cleanup")
    stats = records[0].report.stats
    assert stats["reshape_reshape_pairs_merged"] == 1 and stats["unsqueeze_pairs_merged"] == 1
    assert _ops(out) == ["Reshape", "Unsqueeze"]
    assert_same_outputs(model, out)


# ---------- constants, shapes, duplicates, fusions ----------

def test_constant_nodes_become_initializers_and_count_as_parameters():
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.measure.counts import graph_counts

    w = rng_array((4, 5))
    nodes = [helper.make_node("Constant", [], ["w"], name="c", value=onnx.numpy_helper.from_array(w, "w")),
             helper.make_node("Constant", [], ["b"], name="cb", value_floats=[0.5] * 5),
             helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    model = make_model(nodes, [tensor("x", [2, 4])], [tensor("y", None)])
    assert graph_counts(to_graph(model))["params"] == 0
    out, records = run_pass(model, "cleanup")
    assert records[0].report.stats["constant_nodes_to_initializers"] == 2
    assert _ops(out) == ["MatMul", "Add"]
    assert graph_counts(to_graph(out))["params"] == 25
    assert_same_outputs(model, out)


def test_constant_of_shape_and_range_fold_within_the_size_limit():
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["fill"], name="cos",
                              value=onnx.numpy_helper.from_array(np.array([0.5], np.float32))),
             helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
             helper.make_node("Cast", ["r"], ["rf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["fill", "rf"], ["bias"], name="bias"),
             helper.make_node("Add", ["x", "bias"], ["y"], name="add")]
    inits = {"s": _i64(2, 4), "start": np.int64(0), "limit": np.int64(4), "delta": np.int64(1)}
    model = make_model(nodes, [tensor("x", [2, 4])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["Add"] and records[0].report.stats["constant_nodes_folded"] == 4
    assert_same_outputs(model, out)
    small, records = run_pass(model, "cleanup{fold_size_limit_mb=0.00001}")  # 10 bytes: the fill is 32
    assert "ConstantOfShape" in _ops(small)
    assert any("size limit" in s.reason for s in records[0].report.skipped)
    assert_same_outputs(model, small)


def _flatten_by_shape(batch):
    """y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])): torch's x.view(x.size(0), -1)."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape")]
    inits = {"zero": np.int64(0), "axes": _i64(0), "minus_one": _i64(-1)}
    return make_model(nodes, [tensor("x", [batch, 3, 4])], [tensor("y", None)], inits)


def test_shape_chain_of_static_dims_folds_away():
    model = _flatten_by_shape(2)
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["Reshape"]
    assert records[0].report.stats["shape_values_folded"] >= 1
    assert_same_outputs(model, out)


def test_reshape_by_a_dynamic_batch_gets_a_constant_target_with_minus_one():
    model = _flatten_by_shape("batch")
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["Reshape"] and records[0].report.stats["reshape_target_made_constant"] == 1
    target = next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [-1, 12]
    _same_at_batches(model, out)
    _, records = run_pass(out, "cleanup")
    assert not records[0].report.modified


def test_a_dynamic_dim_is_never_folded_into_a_number():
    """ConstantOfShape([batch, 5]) needs the batch at run time: the Shape stays; the static dim
    gathered beside it (3) becomes a constant."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather_batch", axis=0),
             helper.make_node("Gather", ["s", "one"], ["c"], name="gather_channels", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze_batch"),
             helper.make_node("Unsqueeze", ["c", "axes"], ["c1"], name="unsqueeze_channels"),
             helper.make_node("Concat", ["n1", "c1"], ["dims"], name="concat", axis=0),
             helper.make_node("ConstantOfShape", ["dims"], ["y"], name="fill",
                              value=onnx.numpy_helper.from_array(np.array([1.0], np.float32)))]
    inits = {"zero": np.int64(0), "one": np.int64(1), "axes": _i64(0)}
    model = make_model(nodes, [tensor("x", ["batch", 3])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    assert "Shape" in _ops(out) and "gather_channels" not in [n.name for n in out.graph.node]
    assert records[0].report.stats["shape_values_folded"] >= 1
    _same_at_batches(model, out)


def test_duplicate_nodes_are_merged():
    nodes = [helper.make_node("Shape", ["x"], ["s1"], name="shape1"),
             helper.make_node("Shape", ["x"], ["s2"], name="shape2"),
             helper.make_node("Relu", ["x"], ["r1"], name="relu1"),
             helper.make_node("Relu", ["x"], ["r2"], name="relu2"),
             helper.make_node("Add", ["r1", "r2"], ["y"], name="add"),
             helper.make_node("Concat", ["s1", "s2"], ["z"], name="concat", axis=0)]
    model = make_model(nodes, [tensor("x", ["n", 3])], [tensor("y", None), tensor("z", None, TensorProto.INT64)])
    out, records = run_pass(model, "cleanup")
    assert records[0].report.stats["duplicate_nodes_merged"] == 2
    assert sorted(_ops(out)) == ["Add", "Concat", "Relu", "Shape"]
    _same_at_batches(model, out)


def test_per_channel_mul_and_add_fold_into_the_conv():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["t", "m"], ["y"], name="shift")]
    inits = {"w": rng_array((4, 3, 3, 3), 1), "b": rng_array((4,), 2), "s": rng_array((1, 4, 1, 1), 3),
             "t": rng_array((4, 1, 1), 4)}
    model = make_model(nodes, [tensor("x", [1, 3, 6, 6])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    stats = records[0].report.stats
    assert _ops(out) == ["Conv"] and stats["conv_mul_fused"] == 1 and stats["conv_add_fused"] == 1
    assert_same_outputs(model, out)


def test_a_mul_before_a_batchnorm_is_left_to_fold_bn():
    """Fusing it would put the BN right after the Conv: fold-bn's work, done after cleanup ran."""
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "s"], ["m"], name="scale"),
             helper.make_node("BatchNormalization", ["m", "g", "beta", "mean", "var"], ["y"], name="bn")]
    rng = np.random.default_rng(0)
    inits = {"w": rng_array((c, 3, 1, 1)), "s": rng_array((1, c, 1, 1), 1),
             "g": rng_array((c,), 2), "beta": rng_array((c,), 3), "mean": rng_array((c,), 4),
             "var": (np.abs(rng.standard_normal(c)) + 0.5).astype(np.float32)}
    model = make_model(nodes, [tensor("x", [1, 3, 4, 4])], [tensor("y", None)], inits)
    out, _ = run_pass(model, "cleanup")
    assert _ops(out) == ["Conv", "Mul", "BatchNormalization"]


def test_a_mul_after_a_batchnorm_goes_into_its_scale():
    c = 4
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "beta", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Mul", ["n", "s"], ["m"], name="scale"),
             helper.make_node("Add", ["m", "t"], ["y"], name="shift")]
    rng = np.random.default_rng(0)
    inits = {"g": rng_array((c,), 2), "beta": rng_array((c,), 3), "mean": rng_array((c,), 4),
             "var": (np.abs(rng.standard_normal(c)) + 0.5).astype(np.float32),
             "s": rng_array((c, 1, 1), 5), "t": rng_array((1, c, 1, 1), 6)}
    model = make_model(nodes, [tensor("x", ["n", c, 3, 3])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup")
    stats = records[0].report.stats
    assert _ops(out) == ["BatchNormalization"]
    assert stats["batchnormalization_mul_fused"] == 1 and stats["batchnormalization_add_fused"] == 1
    _same_at_batches(model, out)


# ---------- the interface ----------

def _interface(model) -> list[bytes]:
    inits = {t.name for t in model.graph.initializer}
    return [v.SerializeToString() for v in model.graph.input if v.name not in inits] + \
           [v.SerializeToString() for v in model.graph.output]


def test_the_interface_stays_exactly_as_declared():
    """Names, dtypes and shapes (symbolic dim names too) of inputs and outputs, even where the
    output's writer is removed and the model repeats the output in value_info with a dim unknown."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape_noop"),
             helper.make_node("Mul", ["r", "one"], ["m"], name="times_one"),
             helper.make_node("Identity", ["m"], ["y"], name="out_id"),
             helper.make_node("Cast", ["x"], ["z"], name="cast_noop", to=TensorProto.FLOAT)]
    model = make_model(nodes, [tensor("x", ["batch", 3, "width"])],
                       [tensor("y", ["batch", 3, "width"]), tensor("z", ["batch", 3, "width"])],
                       {"one": np.float32(1)})
    model.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, None]))
    out, records = run_pass(model, "cleanup")
    assert len(out.graph.node) < len(model.graph.node), records[0].report.stats
    assert _interface(out) == _interface(model)
    _same_at_batches(model, out)


@pytest.mark.slow
def test_a_real_ocr_detector_keeps_its_interface():
    """trueocr's detector (built by `python -m models.corpus.fetch --out build/corpus`): output
    'out' is [Concatout_dim_0, 3, 'h', 'w'], a shape onnxslim rewrites; cleanup must not."""
    from conftest import REPO

    path = REPO / "build" / "corpus" / "trueocr_det.onnx"
    if not path.is_file():
        pytest.skip("build/corpus/trueocr_det.onnx not fetched")
    model = onnx.load(str(path))
    out, records = run_pass(model, "cleanup")
    assert len(out.graph.node) < len(model.graph.node)
    assert _interface(out) == _interface(model)
    feeds = {"x": np.random.default_rng(0).uniform(0, 1, (1, 1, 256, 256)).astype(np.float32)}
    expected, got = run(model, feeds), run(out, feeds)
    np.testing.assert_allclose(got["out"], expected["out"], atol=1e-5, rtol=1e-5)


def test_shape_inference_failing_is_a_reason_not_a_crash(monkeypatch):
    from onnxcomp.passes.cleanup import facts

    def broken(*args, **kwargs):
        raise RuntimeError("inference exploded")

    monkeypatch.setattr(facts, "_symbolic", broken)
    nodes = [helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),  # a data-dependent shape
             helper.make_node("Shape", ["nz"], ["s"], name="shape"),
             helper.make_node("Reshape", ["nz", "s"], ["y"], name="reshape")]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", None, TensorProto.INT64)])
    out, records = run_pass(model, "cleanup")
    assert any(s.name == "shape inference" and "inference exploded" in s.reason for s in records[0].report.skipped)
    assert_same_outputs(model, out)


# ---------- a real exporter ----------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_with_a_shape_subgraph_folds():
    torch = pytest.importorskip("torch")
    import io

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 5 * 5, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.size(0), -1))

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(2, 3, 5, 5),), buffer, opset_version=13, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert "Shape" in _ops(model)
    out, records = run_pass(model, "cleanup")
    assert not {"Shape", "Gather", "Unsqueeze", "Concat"} & set(_ops(out)), _ops(out)
    assert records[0].report.stats["reshape_target_made_constant"] == 1
    assert _interface(out) == _interface(model)
    _same_at_batches(model, out)


# ---------- on par with onnxslim: splats, dequantization, Reshape pairs, BN producers ----------

def _fill(shape_name, out, value=0.02):
    return helper.make_node("ConstantOfShape", [shape_name], [out], name=f"fill_{out}",
                            value=onnx.numpy_helper.from_array(np.array([value], np.float32)))


def _init_bytes(model) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def test_large_splats_stay_constant_of_shape_small_ones_fold():
    """A weight that repeats one value (dummy weights, zero caches) costs the file all its bytes as
    an initializer and a few as ConstantOfShape: past splat_limit_kb it stays a node."""
    nodes = [_fill("ws", "w"), _fill("bs", "b"),
             helper.make_node("Expand", ["half", "big"], ["e"], name="expand"),  # a splat made another way
             helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm"),
             helper.make_node("Add", ["g", "e"], ["y"], name="add")]
    inits = {"ws": _i64(256, 128), "bs": _i64(128), "half": np.array([[0.5]], np.float32), "big": _i64(256, 128)}
    model = make_model(nodes, [tensor("x", [256, 256])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup{splat_limit_kb=64,materialise_weights=false}")
    stats = records[0].report.stats
    assert sorted(_ops(out)) == ["Add", "ConstantOfShape", "ConstantOfShape", "Gemm"]  # bias (512 B) folded
    assert stats["splats_kept_compact"] == 2
    assert _init_bytes(out) < 4096  # not the 128 KB of each splat
    assert_same_outputs(model, out)
    full, records = run_pass(model, "cleanup{splat_limit_kb=1024}")
    assert _ops(full) == ["Gemm", "Add"] and _init_bytes(full) > 2 * 128 * 1024
    assert "splats_kept_compact" not in records[0].report.stats
    assert_same_outputs(model, full)
    default, _ = run_pass(model, "cleanup")  # the default limit is the folding limit (64 MB): folded
    assert _ops(default) == ["Gemm", "Add"]


def test_a_splat_weight_becomes_an_initializer_past_every_limit():
    """A dummy weight past the splat and fold limits (the model zoo's 150 MB FC weights) is still a
    parameter: it becomes an initializer, while a splat read by an Add (a buffer) stays compact."""
    nodes = [_fill("ws", "w"), _fill("bs", "b"),
             helper.make_node("Expand", ["half", "big"], ["e"], name="expand"),
             helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm"),
             helper.make_node("Add", ["g", "e"], ["y"], name="add")]
    inits = {"ws": _i64(512, 128), "bs": _i64(128), "half": np.array([[0.5]], np.float32), "big": _i64(256, 128)}
    model = make_model(nodes, [tensor("x", [256, 512])], [tensor("y", None)], inits)
    out, records = run_pass(model, "cleanup{splat_limit_kb=64,fold_size_limit_mb=0.2}")  # w: 256 KB, e: 128 KB
    assert sorted(_ops(out)) == ["Add", "ConstantOfShape", "Gemm"]
    assert records[0].report.stats["splats_kept_compact"] == 1
    weight = next(t for t in out.graph.initializer if list(t.dims) == [512, 128])
    assert np.all(onnx.numpy_helper.to_array(weight) == np.float32(0.02))
    assert_same_outputs(model, out)


def test_negative_zero_is_not_a_splat_of_zero():
    nodes = [helper.make_node("Mul", ["zeros", "signs"], ["c"], name="mul"),  # +0 and -0 mixed
             helper.make_node("Div", ["one", "c"], ["inf"], name="div"),      # +inf and -inf
             helper.make_node("Add", ["x", "inf"], ["y"], name="add")]
    signs = np.where(np.arange(128 * 128) % 2, 1.0, -1.0).astype(np.float32).reshape(128, 128)
    model = make_model(nodes, [tensor("x", [128, 128])], [tensor("y", None)],
                       {"zeros": np.zeros((128, 128), np.float32), "signs": signs, "one": np.float32(1)})
    out, _ = run_pass(model, "cleanup{splat_limit_kb=1}")
    assert "ConstantOfShape" not in _ops(out)
    x = np.ones((128, 128), np.float32)
    np.testing.assert_array_equal(run(out, {"x": x})["y"], run(model, {"x": x})["y"])


def test_dequantization_folds_by_default_and_stays_when_asked():
    nodes = [helper.make_node("Cast", ["wq"], ["wf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wf", "ws"], ["w"], name="scale"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    wq = np.random.default_rng(0).integers(-127, 127, (64, 32)).astype(np.int8)
    model = make_model(nodes, [tensor("x", [2, 64])], [tensor("y", None)],
                       {"wq": wq, "ws": np.full((1, 32), 0.02, np.float32)})
    out, records = run_pass(model, "cleanup")
    assert _ops(out) == ["MatMul"] and _init_bytes(out) > 4 * wq.size
    assert records[0].report.stats["dequantizations_folded"] == 1
    assert records[0].report.stats["dequantized_bytes_added"] == 3 * wq.size
    assert_same_outputs(model, out)


def _reshape_pair(target_node, target_inputs, inits, x_shape, allow_dims=None):
    """y = Reshape(Reshape(x, [-1]), target) with target made by `target_node`."""
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["m"], name="r1"), target_node,
             helper.make_node("Reshape", ["m", "t"], ["y"], name="r2")]
    inputs = [tensor("x", x_shape)] + [tensor(n, s) for n, s in target_inputs]
    return make_model(nodes, inputs, [tensor("y", None)], {"flat": _i64(-1), **inits})


def test_reshape_pair_to_a_shape_of_merges_when_zero_dims_agree():
    """Reshape(Reshape(x, [-1]), Shape(z)): an entry of Shape(z) is 0 only when z's dim is; where
    that dim is x's own (same symbol), both forms copy a 0 (the flat one has 0 elements then)."""
    model = _reshape_pair(helper.make_node("Shape", ["z"], ["t"], name="shape"),
                          [("z", ["N", "K"])], {}, ["N", "K", 1])
    out, records = run_pass(model, "cleanup")
    assert records[0].report.stats["reshape_reshape_pairs_merged"] == 1
    assert _ops(out) == ["Shape", "Reshape"]
    for n in (0, 1, 3):
        feeds = {"x": rng_array((n, 2, 1)), "z": rng_array((n, 2))}
        np.testing.assert_array_equal(run(out, feeds)["y"], run(model, feeds)["y"])


def test_reshape_pair_with_an_unrelated_symbol_is_kept():
    """z's first dim M is not x's: M could be 0 where x is not empty, and then the outer Reshape
    copies dim 0 of what it reads (the flat one's, x's once merged): kept."""
    model = _reshape_pair(helper.make_node("Shape", ["z"], ["t"], name="shape"),
                          [("z", ["M", "K"])], {}, ["N", "K", 1])
    out, records = run_pass(model, "cleanup")
    assert "reshape_reshape_pairs_merged" not in records[0].report.stats
    assert _ops(out).count("Reshape") == 2


def test_reshape_pair_with_a_literal_zero_merges_only_over_an_equal_dim():
    def pair(first, second):
        nodes = [helper.make_node("Reshape", ["x", "a"], ["m"], name="r1"),
                 helper.make_node("Reshape", ["m", "b"], ["y"], name="r2")]
        return make_model(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", None)],
                          {"a": _i64(*first), "b": _i64(*second)})
    same = pair((0, 12), (0, 2, 6))       # dim 0 of m is dim 0 of x: the 0 copies the same size
    out, _ = run_pass(same, "cleanup")
    assert _ops(out) == ["Reshape"]
    _same_at_batches(same, out)
    moved = pair((-1, 6), (0, 3, 2))      # m's dim 0 is 2N, x's is N: kept
    out, _ = run_pass(moved, "cleanup")
    assert _ops(out) == ["Reshape", "Reshape"]
    _same_at_batches(moved, out)


def test_identical_convs_before_different_batchnorms_stay_apart():
    """Two Convs with equal inputs, weights and attributes, each read by its own BatchNormalization:
    merged, the one Conv would feed two BNs and fold-bn could fold neither."""
    w = rng_array((4, 3, 1, 1), 1)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1"),
             helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], name="bn2"),
             helper.make_node("Add", ["n1", "n2"], ["y"], name="add")]
    inits = {"w1": w, "w2": w.copy()}
    for i in (1, 2):
        inits.update({f"g{i}": rng_array(4, 10 + i), f"b{i}": rng_array(4, 20 + i),
                      f"m{i}": rng_array(4, 30 + i), f"v{i}": np.abs(rng_array(4, 40 + i)) + 0.5})
    model = make_model(nodes, [tensor("x", [1, 3, 5, 5])], [tensor("y", None)], inits)
    out, _ = run_pass(model, "cleanup,fold-bn")
    assert sorted(_ops(out)) == ["Add", "Conv", "Conv"]
    assert_same_outputs(model, out, atol=1e-4, rtol=1e-4)
    same_bn = make_model(nodes[:3] + [helper.make_node("BatchNormalization", ["c2", "g1", "b1", "m1", "v1"],
                                                       ["n2"], name="bn2"), nodes[4]],
                         [tensor("x", [1, 3, 5, 5])], [tensor("y", None)],
                         {k: v for k, v in inits.items() if k[-1] != "2" or k == "w2"})
    out, _ = run_pass(same_bn, "cleanup,fold-bn")
    assert sorted(_ops(out)) == ["Add", "Conv"]  # equal BNs too: one Conv, one BN, folded


def test_splat_weight_before_a_batchnorm_is_materialised_for_fold_bn():
    """fold-bn scales a Conv weight per channel: a splat there stops being one, so cleanup gives
    fold-bn the initializer it needs rather than a ConstantOfShape it cannot fold into."""
    nodes = [_fill("ws", "w"),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"], name="bn")]
    inits = {"ws": _i64(64, 32, 3, 3), "g": rng_array(64, 1), "b": rng_array(64, 2), "m": rng_array(64, 3),
             "v": np.abs(rng_array(64, 4)) + 0.5}
    model = make_model(nodes, [tensor("x", [1, 32, 6, 6])], [tensor("y", None)], inits)
    out, _ = run_pass(model, "cleanup,fold-bn")
    assert _ops(out) == ["Conv"]
    assert_same_outputs(model, out, atol=1e-4, rtol=1e-4)


def test_a_moved_splat_folds_into_one_constant_of_shape():
    """Reshape(ConstantOfShape(s), t) is ConstantOfShape(t): folded so, not into the tensor."""
    nodes = [_fill("ws", "wt"), helper.make_node("Reshape", ["wt", "t"], ["w"], name="reshape"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [tensor("x", [2, 256])], [tensor("y", None)], {"ws": _i64(128, 256), "t": _i64(256, 128)})
    out, records = run_pass(model, "cleanup{splat_limit_kb=64,materialise_weights=false}")
    assert _ops(out) == ["ConstantOfShape", "MatMul"] and records[0].report.stats["splats_kept_compact"] == 1
    assert _init_bytes(out) < 4096
    assert_same_outputs(model, out)
